"""The ``litlab`` command: LightningCLI (``fit``, ``validate``, ``test``, ``predict``) plus litlab's own commands.

- ``litlab fit --config configs/moe/vit_tiny_moe.yaml [--model.init_args.num_experts=16 ...]``
- ``litlab validate|test|predict --config ... --ckpt_path ...``
- ``litlab retrofit --config ... --ckpt_path ...``: AfterLearnER retrofitting of a trained checkpoint with the
  config's ``EvolutionaryRetrofit`` callback, without training (:meth:`LitlabTrainer.retrofit`)
- ``litlab write_shards <ImageFolder root> <output dir>``: write webdataset shards (ImageNet layout)
- ``litlab write_text_shards <corpus> <output dir>``, ``litlab train_bpe --output bpe.json``: text data
- ``litlab generate --ckpt_path ... --prompt "..."``: sample from a trained AU-Net or Transformer LM
- ``litlab compare_lms``: AU-Net 2/3 vs the BPE and flat-byte baselines at equal training FLOPs
- ``litlab demo``: the end-to-end demonstration of ``make demo``

Model and data are given in subclass mode (``class_path`` + ``init_args``), YAML files may use ``${...}``
interpolation (omegaconf parser mode). Errors caused by user input (:class:`litlab.errors.LitlabError`) are
printed as one line naming the argument, file or record, not as a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from litlab.errors import ConfigError, LitlabError

# Commands that need no model or trainer: name -> "module:function".
TOOLS = {
    "write_shards": "litlab.datamodules.shard_writer:write_image_shards",
    "write_text_shards": "litlab.datamodules.text_shards:write_text_shards",
    "train_bpe": "litlab.datamodules.bpe:train_bpe",
    "compare_lms": "litlab.evaluation.compare:compare_language_models",
    "generate": "litlab.lightning_modules.generate:generate_text",
    "show_splits": "litlab.text.boundaries:show_splits",
    "demo": "litlab.demo:run_demo",
    "retrofit_lm": "litlab.evaluation.lm_retrofit:retrofit_language_model",
}


# Datamodule attributes copied into the model's arguments of the same name, when both exist.
LINKED_DATA_ARGS = (
    "num_classes", "img_size", "in_chans",  # images
    "vocab_size", "seq_len", "tokenizer", "tokenizer_path", "bytes_per_token", "word_groups",  # text
)


class LitlabTrainer(Trainer):
    """Lightning's Trainer; litlab's model-level subcommands are added here as methods."""

    def retrofit(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        verbose: bool = True,
    ) -> Any:
        """Retrofit a trained checkpoint (AfterLearnER) with the EvolutionaryRetrofit callback, without training.

        Runs ``validate`` on the checkpoint (which loads it, sets up the data and, under DDP, the processes, and
        reports the loaded model's validation metrics), then the callback's search at the end of the validation
        loop; the retrofitted weights, report and plot go to the callback's ``output_dir``.

        Args:
            model: The LightningModule (the config's ``model``).
            datamodule: Its data (the config's ``data``); the search splits its validation set.
            ckpt_path: The trained checkpoint (a path, or ``best``/``last`` as for ``validate``); None retrofits
                the model as it is.
            verbose: Print the validation metrics of the loaded model.

        Returns:
            The engine's :class:`~litlab.evolution.EvolutionResult` (None when the search was skipped).
        """
        from litlab.callbacks.retrofit import EvolutionaryRetrofit

        found = [cb for cb in self.callbacks if isinstance(cb, EvolutionaryRetrofit)]
        if len(found) != 1:
            raise ConfigError("retrofit: add an EvolutionaryRetrofit callback to trainer.callbacks" if not found else
                              f"retrofit: trainer.callbacks has {len(found)} EvolutionaryRetrofit callbacks; keep one")
        with found[0].in_validate():
            self.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=verbose)
        return found[0].result


class LitlabCLI(LightningCLI):
    """LightningCLI in omegaconf parser mode, with model and data in subclass mode.

    Values that model and data must agree on are stated once, under ``data``, and linked into the model: the
    class count, image size and channels of image datamodules; the vocabulary, window, tokenizer and splitting
    rule of text datamodules. A link whose source attribute or target argument does not exist for the chosen
    classes is skipped by jsonargparse, so one list serves every family.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            trainer_class=LitlabTrainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """LightningCLI's subcommands plus ``retrofit`` (:meth:`LitlabTrainer.retrofit`), with the arguments to skip."""
        return {**LightningCLI.subcommands(), "retrofit": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED_DATA_ARGS:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")


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
