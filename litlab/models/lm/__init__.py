"""Causal language models in pure PyTorch: Transformer blocks, the flat Transformer (BPE or bytes), AU-Net
(pooling, multi-linear upsampling, block-local attention), KV-cached generation and FLOP accounting."""

from litlab.models.lm.aunet import AUNet
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.models.lm.generation import Stepper, generate

__all__ = ["AUNet", "FlatTransformer", "Stepper", "generate"]
