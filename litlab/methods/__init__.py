"""Experiment drivers: one module per paper-level experiment, combining the floors below (models, data,
LightningModules, callbacks, the evolution engine, evaluation). The ``litlab`` subcommands call these.

* :mod:`.demo`: ``litlab demo``, MoE vs dense ViT on embedded MNIST, then AfterLearnER on the MoE model.
* :mod:`.compare_lms`: ``litlab compare_lms``, AU-Net 2/3 vs BPE vs flat bytes at equal training FLOPs.
* :mod:`.afterlearner_lm`: ``litlab retrofit_lm``, AfterLearnER on a language model against greedy exact match.
* :mod:`.generate`: ``litlab generate``, sample from a trained language-model checkpoint.
"""
