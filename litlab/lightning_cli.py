"""litlab's LightningCLI: :class:`LitlabCLI` (omegaconf parser mode, model and data in subclass mode, data → model
argument links) and :class:`LitlabTrainer` (Lightning's Trainer plus litlab's model-level subcommands).

The ``litlab`` command (:mod:`litlab.cli`) runs them; experiment drivers (:mod:`litlab.methods`) build them to
fit from a config in the same way as the command line does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from litlab.errors import ConfigError

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
            datamodule_class=None,  # subclass mode over LightningDataModule, optional: a module may bring its data
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


def build_from_config(config: str, overrides: Sequence[str] = ()) -> tuple[LightningModule, LightningDataModule | None]:
    """The model and datamodule of a ``litlab fit`` config (with command-line ``overrides``), built exactly as the
    command line builds them (seeding, argument links), without a logger and without running anything."""
    cli = LitlabCLI(args=["--config", config, "--trainer.logger=false", *overrides], run=False)
    return cli.model, cli.datamodule
