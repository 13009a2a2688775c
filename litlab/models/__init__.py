"""Pure-PyTorch models (no Lightning): MoE vision surgery, AU-Net and its flat Transformer baseline."""

from litlab.models import isotropic_convnext  # noqa: F401  (registers the timm names convnext_isotropic_*)
from litlab.models.aunet import AUNet
from litlab.models.flat_transformer import FlatTransformer
from litlab.models.generation import Stepper, generate

__all__ = ["AUNet", "FlatTransformer", "Stepper", "generate"]
