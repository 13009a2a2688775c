"""``litlab export_hf``: write a trained TransformerLM checkpoint as a Hugging Face Llama directory.

The directory (:func:`litlab.models.lm.hf_export.export_llama`) loads with
``transformers.LlamaForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` (BPE models) and gives
the same logits as litlab in float32 (within about 1e-5).
"""

from __future__ import annotations

import sys

from litlab.errors import DataError
from litlab.lightning_modules.loading import load_language_model
from litlab.lightning_modules.transformer_lm import TransformerLM
from litlab.models.lm.hf_model import torch_dtype


def export_hf(*, ckpt: str, out: str, dtype: str = "float32") -> str:
    """Export a TransformerLM checkpoint of ``litlab fit`` as a Hugging Face Llama model directory.

    Writes ``config.json``, ``model.safetensors``, ``generation_config.json`` and, for a BPE model, the tokenizer
    (a byte model gets no tokenizer files: its ids are the bytes, then BOS=256 and EOS=257).

    The arguments are keyword-only, so the command reads ``litlab export_hf --ckpt model.ckpt --out hf_dir``.

    Args:
        ckpt: Checkpoint of ``litlab fit`` with a TransformerLM (BPE or bytes).
        out: Directory to write (new or empty; a previous export there is replaced).
        dtype: Weights' dtype: ``float32``, ``bfloat16`` or ``float16``.

    Returns:
        The directory written.
    """
    torch_dtype(dtype)  # ConfigError naming a dtype that is not allowed
    lm = load_language_model(ckpt)
    if not isinstance(lm, TransformerLM):
        raise DataError(
            f"ckpt={ckpt!r} holds a {type(lm).__name__}, not a TransformerLM: only TransformerLM exports to Llama"
        )
    directory = lm.export_hf(out, dtype)  # loads the BPE first (ConfigError naming tokenizer_path if it is gone)
    if lm.hparams.tokenizer != "bpe":
        print(f"note: byte model, no tokenizer files written (ids 0..255 are bytes, BOS={lm.bos_id}, "
              f"EOS={lm.eos_id})", file=sys.stderr)
    print(directory)
    return directory
