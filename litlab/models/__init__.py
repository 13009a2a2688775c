from litlab.models import isotropic_convnext  # noqa: F401  (registers the timm names convnext_isotropic_*)
