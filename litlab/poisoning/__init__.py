"""Winter Soldier (arXiv 2506.14913): indirect data poisoning of LM pre-training, as plain PyTorch parts.

- :mod:`~litlab.poisoning.secret`: the owner's secrets (random prompt -> random response), drawn, saved, loaded.
- :mod:`~litlab.poisoning.crafting`: the gradient-matching objective over relaxed (Gumbel-softmax) tokens.
- :mod:`~litlab.poisoning.injection`: poison documents inserted into a corpus at a token rate.
- :mod:`~litlab.poisoning.detection`: the top-l hit test and its exact binomial p-value.
- :mod:`~litlab.poisoning.baselines`: canary Z-score, Min-K% Prob and a pairwise-token backdoor.

Nothing here imports Lightning: the crafting LightningModule is
:class:`litlab.lightning_modules.PoisonCrafter`, the detection callback :class:`litlab.callbacks.SecretDetection`.
"""
