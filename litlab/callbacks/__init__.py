"""Lightning callbacks of litlab."""

from litlab.callbacks.expert_usage import ExpertUsage

__all__ = ["ExpertUsage"]
