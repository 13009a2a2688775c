"""Thin LightningModules around the pure-PyTorch models of :mod:`litlab.models`."""

from litlab.lightning_modules.image_classifier import MoEImageClassifier

__all__ = ["MoEImageClassifier"]
