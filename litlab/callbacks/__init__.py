"""Lightning callbacks of litlab."""

from litlab.callbacks.bboxer import BBoxER
from litlab.callbacks.eppo import EPPO
from litlab.callbacks.expert_usage import ExpertUsage
from litlab.callbacks.hf_export import HFExport
from litlab.callbacks.retrofit import EvolutionaryRetrofit
from litlab.callbacks.secret_detection import SecretDetection

__all__ = ["BBoxER", "EPPO", "EvolutionaryRetrofit", "ExpertUsage", "HFExport", "SecretDetection"]
