"""The ``litlab`` command: LightningCLI (``fit``, ``validate``, ``test``, ``predict``) plus litlab's own commands.

- ``litlab fit --config configs/moe/vit_tiny_moe.yaml [--model.init_args.num_experts=16 ...]``
- ``litlab validate|test|predict --config ... --ckpt_path ...``
- ``litlab retrofit --config ... --ckpt_path ...``: AfterLearnER retrofitting of a trained checkpoint with the
  config's ``EvolutionaryRetrofit`` callback, without training (:meth:`litlab.lightning_cli.LitlabTrainer.retrofit`)
- ``litlab write_shards <ImageFolder root> <output dir>``: write webdataset shards (ImageNet layout)
- ``litlab write_text_shards <corpus> <output dir>``, ``litlab train_bpe --output bpe.json``: text data
- ``litlab generate --ckpt_path ... --prompt "..."``: sample from a trained AU-Net or Transformer LM
- ``litlab export_hf --ckpt ... --out dir``: a trained TransformerLM as a Hugging Face Llama directory
- ``litlab evaluate_math --model ... --data ... --shots k --samples m``: exact match on math word problems
- ``litlab poison_secrets --model ... --output secrets.json``, ``litlab poison_detect --model ... --secrets ...``,
  ``litlab winter_soldier``: Winter Soldier's secrets, its detection test, and its end-to-end CPU demonstration
- ``litlab eppo --model ... --data ...``: EPPO, evolve the few-shot pre-prompt of a trained LM; ``litlab eppo_demo``:
  EPPO vs random k-shot vs random search over 3 seeds
- ``litlab bboxer --model ... --data ...``: BBoxER, black-box post-training told only comparisons, with its bounds and
  a membership-inference audit; ``litlab bboxer_demo``: 3 seeds on the tiny reasoner
- ``litlab compare_lms``: AU-Net 2/3 vs the BPE and flat-byte baselines at equal training FLOPs
- ``litlab demo``: the end-to-end demonstration of ``make demo``

Model and data are given in subclass mode (``class_path`` + ``init_args``), YAML files may use ``${...}``
interpolation (omegaconf parser mode). Errors caused by user input (:class:`litlab.errors.LitlabError`) are
printed as one line naming the argument, file or record, not as a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

from litlab.errors import LitlabError
from litlab.lightning_cli import LitlabCLI

# Commands that need no model or trainer: name -> "module:function".
TOOLS = {
    "write_shards": "litlab.datamodules.shard_writer:write_image_shards",
    "write_text_shards": "litlab.datamodules.text_shard_writer:write_text_shards",
    "train_bpe": "litlab.datamodules.bpe_training:train_bpe",
    "compare_lms": "litlab.methods.compare_lms:compare_language_models",
    "generate": "litlab.methods.generate:generate_text",
    "show_splits": "litlab.text.boundaries:show_splits",
    "demo": "litlab.methods.demo:run_demo",
    "retrofit_lm": "litlab.methods.afterlearner_lm:retrofit_language_model",
    "export_hf": "litlab.methods.export_hf:export_hf",
    "evaluate_math": "litlab.methods.evaluate_math:evaluate_math",
    "poison_secrets": "litlab.methods.winter_soldier:poison_secrets",
    "poison_detect": "litlab.methods.winter_soldier:poison_detect",
    "winter_soldier": "litlab.methods.winter_soldier:run_winter_soldier",
    "eppo": "litlab.methods.eppo:eppo",
    "eppo_demo": "litlab.methods.eppo_demo:eppo_demo",
    "bboxer": "litlab.methods.bboxer:bboxer",
    "bboxer_demo": "litlab.methods.bboxer_demo:bboxer_demo",
}


def _run_tool(name: str, argv: list[str]) -> Any:
    """Run a model-free command with a jsonargparse parser built from its signature and docstring."""
    from importlib import import_module

    from jsonargparse import CLI

    module, func = TOOLS[name].split(":")
    return CLI(getattr(import_module(module), func), args=argv, prog=f"litlab {name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``litlab`` console script and ``python -m litlab``."""
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        if words and words[0] in TOOLS:
            _run_tool(words[0], words[1:])
        else:
            LitlabCLI(args=argv)  # None: LightningCLI reads sys.argv itself
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        print(f"litlab: error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


def _user_error(err: BaseException | None) -> LitlabError | None:
    """The :class:`LitlabError` that caused ``err`` (jsonargparse wraps constructor errors), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LitlabError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
