"""Thin LightningModules around the pure-PyTorch models of :mod:`litlab.models`."""

from litlab.lightning_modules.aunet_lm import AUNetLM
from litlab.lightning_modules.hf_causal_lm import HFCausalLM
from litlab.lightning_modules.image_classifier import MoEImageClassifier
from litlab.lightning_modules.language_model import LanguageModel
from litlab.lightning_modules.poison_crafter import PoisonCrafter
from litlab.lightning_modules.transformer_lm import TransformerLM

__all__ = ["AUNetLM", "HFCausalLM", "LanguageModel", "MoEImageClassifier", "PoisonCrafter", "TransformerLM"]
