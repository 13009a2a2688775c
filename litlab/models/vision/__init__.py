"""MoE surgery on timm image models: placement of the MoE layers, the isotropic ConvNeXt, accounting.

Importing this package registers the timm names ``convnext_isotropic_*`` (:mod:`.isotropic_convnext`).
"""

from litlab.models.vision import isotropic_convnext  # noqa: F401  (registers the timm names)
from litlab.models.vision.accounting import count_parameters, flops_per_image, summarize
from litlab.models.vision.placement import resolve_placement
from litlab.models.vision.surgery import MoEMlp, create_model, load_checkpoint

__all__ = [
    "MoEMlp",
    "count_parameters",
    "create_model",
    "flops_per_image",
    "load_checkpoint",
    "resolve_placement",
    "summarize",
]
