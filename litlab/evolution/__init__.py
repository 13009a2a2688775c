"""Evolutionary engine shared by AfterLearnER, BBoxER and EPPO: search spaces over a model's parameters and
hyperparameters, a seeded nevergrad ask/tell loop with distributed fitness, checkpoint/resume, and
generalization bounds. Pure PyTorch + nevergrad: no Lightning import (the callbacks wrap it).

Example::

    space = SearchSpace({
        "norms": ParameterSpace(model, module_type=torch.nn.LayerNorm, select="*.weight", granularity="channel"),
        "hp": (hp := HyperParameters({"bias": ([0.0] * num_classes, -1.0, 1.0)})),
    })
    def accuracy(model, batch):
        x, y = batch
        logits = model(x) + torch.as_tensor(hp["bias"], dtype=torch.float32)
        return (logits.argmax(-1) == y).float()
    engine = EvolutionEngine(model, space, Fitness(accuracy), optimizer="OnePlusOne", budget=200,
                             feedback="comparison", checkpoint_path="runs/retrofit/state.pt")
    result = engine.run(selection_batches)  # a list of batches or a DataLoader (this rank's shard)
    result.to_json("runs/retrofit/report.json"); result.plot("runs/retrofit/fitness.png")
"""

from litlab.evolution.bounds import (
    best_of_runs_bits,
    comparison_bits,
    generalization_gap,
    value_bits,
)
from litlab.evolution.demonstration_space import DemonstrationSpace
from litlab.evolution.distributed import shard
from litlab.evolution.engine import EvolutionEngine
from litlab.evolution.fitness import Fitness, FitnessValue
from litlab.evolution.hyperparameters import HyperParameters
from litlab.evolution.index_space import IndexSpace
from litlab.evolution.modification import modification_space
from litlab.evolution.optimizer import make_optimizer, optimizer_names
from litlab.evolution.parameter_filter import ParameterFilter
from litlab.evolution.parameter_space import ParameterSpace
from litlab.evolution.privacy import bounds_table, dp_statement, extraction_bound, poisoning_certificate
from litlab.evolution.report import EvolutionResult
from litlab.evolution.search_space import SearchSpace, SpacePart
from litlab.evolution.subspace import SubspaceSpace

__all__ = [
    "DemonstrationSpace",
    "EvolutionEngine",
    "EvolutionResult",
    "Fitness",
    "FitnessValue",
    "HyperParameters",
    "IndexSpace",
    "ParameterFilter",
    "ParameterSpace",
    "SearchSpace",
    "SpacePart",
    "SubspaceSpace",
    "best_of_runs_bits",
    "bounds_table",
    "comparison_bits",
    "dp_statement",
    "extraction_bound",
    "generalization_gap",
    "make_optimizer",
    "modification_space",
    "optimizer_names",
    "poisoning_certificate",
    "shard",
    "value_bits",
]
