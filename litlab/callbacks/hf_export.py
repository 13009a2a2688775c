"""`HFExport`: after ``fit``, write the trained TransformerLM as a Hugging Face Llama directory.

The directory (``config.json``, ``model.safetensors``, the tokenizer of a BPE model) loads with
``transformers.AutoModelForCausalLM`` / ``AutoTokenizer`` or as ``HFCausalLM(pretrained_path=...)``. Written by
rank 0 in ``on_fit_end`` (after ``ModelCheckpoint`` and weight-averaging callbacks have run), so it holds the
final weights of the fit.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from litlab.errors import ConfigError
from litlab.models.lm.hf_model import torch_dtype


class HFExport(Callback):
    """Exports the fitted model to a Hugging Face directory with its ``export_hf(output_dir, dtype)``
    (:meth:`litlab.lightning_modules.TransformerLM.export_hf`).

    Args:
        output_dir: The directory to write (a previous export there is replaced).
        dtype: Weights' dtype: ``float32``, ``bfloat16`` or ``float16``.
    """

    def __init__(self, output_dir: str, dtype: str = "float32") -> None:
        torch_dtype(dtype)  # ConfigError naming a dtype that is not allowed
        if not isinstance(output_dir, str) or not output_dir:
            raise ConfigError(f"output_dir={output_dir!r} is not allowed: give a directory")
        self.output_dir, self.dtype = output_dir, dtype
        self.path: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "export_hf", None)):
            raise ConfigError(f"HFExport needs a module that exports itself (export_hf: TransformerLM), got "
                              f"{type(pl_module).__name__}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self.path = pl_module.export_hf(self.output_dir, self.dtype)
            rank_zero_info(f"HFExport: wrote the Hugging Face model to {self.path}")
