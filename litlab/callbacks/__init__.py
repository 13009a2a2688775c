"""Lightning callbacks of litlab."""

from litlab.callbacks.expert_usage import ExpertUsage
from litlab.callbacks.hf_export import HFExport
from litlab.callbacks.retrofit import EvolutionaryRetrofit
from litlab.callbacks.secret_detection import SecretDetection

__all__ = ["EvolutionaryRetrofit", "ExpertUsage", "HFExport", "SecretDetection"]
