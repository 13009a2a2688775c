"""Pure-PyTorch models (no Lightning).

* :mod:`litlab.models.moe`: the mixture-of-experts layer (router, experts, dispatch, balancing losses).
* :mod:`litlab.models.vision`: MoE surgery on timm ViT and ConvNeXt models, placement, the isotropic ConvNeXt,
  parameter and FLOP accounting.
* :mod:`litlab.models.lm`: causal language models: Transformer blocks, the flat Transformer, AU-Net (pooling,
  multi-linear upsampling, local attention), KV-cached generation, FLOP accounting.
"""

from litlab.models import vision  # noqa: F401  (registers the timm names convnext_isotropic_*)
