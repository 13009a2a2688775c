"""`BBoxER`: black-box evolutionary post-training of a language model after ``fit`` (arXiv 2507.01752).

A seeded nevergrad optimizer proposes ``x``; the trained model's chosen tensors become ``W ⊙ exp(x)``
(:func:`litlab.evolution.modification.modification_space`: norm scales, per-layer scales, per-output-channel
scales of linear layers, a random subspace); the changed model solves the *training problems* (math word problems,
batched greedy generation, exact match: :class:`litlab.evaluation.math_scoring.MathAccuracy`) and the optimizer is
told only whether it beat the best so far (comparison feedback, one bit per step for a (1+1) optimizer). The
changes are applied in place and undone from copies of the touched tensors only
(:class:`~litlab.evolution.ParameterSpace`), so the search needs the inference memory plus those tensors.

The result comes with its bounds (:mod:`litlab.evolution.privacy`): the generalization gap from the bits told,
for the user's ``delta``; the extraction bound; the poisoning certificate (``k`` altered problems flip only
comparisons closer than ``2k/n``); the DP formula with the run's numbers, flagged when vacuous. Held-out
problems (disjoint) report the result and, with ``safeguard``, veto it; a *transfer* set (another template
family or number range, e.g. ``procedural_math:procedural_templates=variant``) is scored before and after.

The problems come from a math spec (:func:`litlab.datamodules.math_corpus.parse_math_spec`): the first
``num_train`` of ``train_split`` (default ``selection``: problems the language model was not trained on), the
first ``num_heldout`` of ``heldout_split``, the first ``num_transfer`` of the transfer spec's ``test`` split.

When it runs, the files (``bboxer.ckpt``, ``report.json`` with the bound table under ``bounds``, ``fitness.png``,
``state.pt`` under ``<log dir>/bboxer``), resume and DDP: :mod:`litlab.callbacks.evolution_base`. Under DDP the
problem *batches* are dealt to the ranks (``batches[rank::world_size]``), so each problem is generated in the same
batch as in one process and the result is identical. FSDP, DeepSpeed and model-parallel strategies shard the
parameters, so named tensors cannot be scaled in place: :meth:`BBoxER.setup` refuses them with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer

from litlab.callbacks.evolution_base import EvaluationData, EvolutionCallback
from litlab.datamodules.math_corpus import parse_math_spec
from litlab.errors import ConfigError, check_choice, check_int
from litlab.evaluation.math_scoring import MathAccuracy, draw_demonstrations, problem_batches
from litlab.evolution import EvolutionResult, Fitness, SearchSpace, shard
from litlab.evolution.modification import NORM_GRANULARITIES, check_places, modification_space
from litlab.evolution.privacy import bounds_table, format_bounds
from litlab.evolution.subspace import PROJECTIONS
from litlab.text.gsm8k import MathProblem

SPLITS = ("train", "selection", "test")
SHARDED_STRATEGIES = ("FSDP", "DeepSpeed", "ModelParallel", "XLAFSDP")


@dataclass
class ProblemSets:
    """The problems of a BBoxER run: training (the fitness), held-out, transfer, the demonstrations, and fresh
    non-members for a membership-inference audit (after the held-out problems in their split)."""

    train: list[MathProblem]
    heldout: list[MathProblem]
    transfer: list[MathProblem]
    demonstrations: list[MathProblem]
    nonmembers: list[MathProblem]


def take(problems: list[MathProblem], count: int, argument: str, where: str, start: int = 0) -> list[MathProblem]:
    """``problems[start:start + count]``, or a ConfigError naming ``argument`` when there are not enough."""
    if start + count > len(problems):
        raise ConfigError(f"{argument}={count} is not allowed: {where} has {len(problems) - start} problems "
                          "available")
    return problems[start:start + count]


def load_problem_sets(
    data: str, train_split: str, num_train: int, heldout_split: str, num_heldout: int, transfer: str | None,
    num_transfer: int, shots: int, seed: int, num_nonmembers: int = 0,
) -> ProblemSets:
    """The problem sets a run needs (the arguments are those of :class:`BBoxER`; ``num_nonmembers`` fresh
    problems of ``heldout_split`` follow the held-out ones)."""
    check_choice("train_split", train_split, SPLITS)
    check_choice("heldout_split", heldout_split, SPLITS)
    dataset, _ = parse_math_spec(data)
    train_all = dataset.problems(train_split)
    train = take(train_all, num_train, "num_train", f"the {train_split} split of {data!r}")
    offset = num_train if heldout_split == train_split else 0  # held-out problems follow the training ones
    held_all = dataset.problems(heldout_split)
    where = f"the {heldout_split} split of {data!r}"
    heldout = take(held_all, num_heldout, "num_heldout", where, offset)
    nonmembers = take(held_all, num_nonmembers, "num_nonmembers", f"{where} after the held-out problems",
                      offset + num_heldout)
    transfer_problems: list[MathProblem] = []
    if transfer is not None and num_transfer:
        variant, _ = parse_math_spec(transfer)
        transfer_problems = take(variant.problems("test"), num_transfer, "num_transfer",
                                 f"the test split of {transfer!r}")
    demonstrations = draw_demonstrations(dataset.problems("train"), shots, seed) if shots else []
    return ProblemSets(train, heldout, transfer_problems, demonstrations, nonmembers)


def refuse_sharded_parameters(strategy: Any) -> None:
    """Raises a one-line ConfigError for strategies that shard parameters (FSDP, DeepSpeed, model parallel)."""
    name = type(strategy).__name__
    if any(key in name for key in SHARDED_STRATEGIES):
        raise ConfigError(f"BBoxER does not support strategy {name}: it shards the parameters, so W*exp(x) cannot "
                          "be applied to named tensors in place; use a single device or DDP")


class BBoxER(EvolutionCallback):
    """Black-box evolutionary post-training of a language model after ``fit``, with its bounds (BBoxER).

    Args:
        data: Math problems spec (``procedural_math[:key=value,...]`` or ``<file>.jsonl:...``); use the spec
            the model was trained with so that the splits are disjoint from its training data.
        train_split: Split whose first ``num_train`` problems are the fitness (the training problems).
        num_train: Training problems (``n`` of the bounds).
        heldout_split: Split whose first ``num_heldout`` problems report the result (after the training problems
            when it is the same split).
        num_heldout: Held-out problems (0: none, and no safeguard).
        transfer: Spec of a variant problem set (other templates or number ranges) scored before and after.
        num_transfer: Problems of the transfer set (its ``test`` split).
        shots: Solved ``train``-split problems in the prompt (0: zero-shot).
        where: Places where ``x`` acts: ``norms``, ``layer_scales``, ``channel_scales``, ``subspace``.
        tensors: Parameter names or glob patterns of the chosen tensors of the other places (default: the
            linear layers of the blocks); an unknown name is an error listing close matches.
        norm_granularity: ``channel`` (one scale per channel of each norm) or ``tensor``.
        scale: Initial mutation size of ``x`` (relative change per step).
        box: ``x`` stays in ``[-box, box]`` (None: unbounded).
        subspace_dim: Dimension of the random subspace.
        projection: ``sparse`` or ``gaussian`` random subspace.
        optimizer: ``OnePlusOne``, ``DiagonalCMA``, ``CMA``, ``TripleOnePlusOne``, ``TripleDiagonalCMA``,
            ``Portfolio`` or ``Zero`` (no change: the control); any nevergrad name works.
        budget: Evaluations, the unmodified model included.
        num_workers: Candidates told together per step (``log2((λ+1)!)`` bits per step).
        seed: Seed of the optimizer, the subspace and the demonstrations.
        feedback: ``comparison`` (default: only rankings are told) or ``value``.
        safeguard: Keep the result only if held-out accuracy does not drop.
        max_new_bytes: Longest generated solution.
        batch_size: Problems generated together.
        poisoning_k: Altered problems the poisoning certificate checks.
        secret_bits: Entropy of the secret of the extraction bound.
        checkpoint_every: Evaluations between writes of ``state.pt``.
        resume: Continue from ``<output_dir>/state.pt`` when it exists.
        output_dir: Directory of the files (default: ``<log dir>/bboxer``).
        delta: Failure probability of the generalization bound.
        progress_bar: Show a rank-0 progress bar (default: when the trainer shows one).
    """

    log_prefix = "bboxer"
    weights_name = "bboxer.ckpt"

    def __init__(
        self,
        data: str = "procedural_math",
        train_split: Literal["train", "selection", "test"] = "selection",
        num_train: int = 128,
        heldout_split: Literal["train", "selection", "test"] = "test",
        num_heldout: int = 256,
        transfer: str | None = None,
        num_transfer: int = 256,
        shots: int = 0,
        where: list[str] | str = "norms",
        tensors: list[str] | None = None,
        norm_granularity: Literal["channel", "tensor"] = "channel",
        scale: float = 0.02,
        box: float | None = 0.5,
        subspace_dim: int = 16,
        projection: Literal["sparse", "gaussian"] = "sparse",
        optimizer: str = "OnePlusOne",
        budget: int = 40,
        num_workers: int = 1,
        seed: int = 0,
        feedback: Literal["value", "comparison"] = "comparison",
        safeguard: bool = True,
        max_new_bytes: int = 320,
        batch_size: int = 32,
        poisoning_k: int = 1,
        secret_bits: float = 128.0,
        checkpoint_every: int = 10,
        resume: bool = True,
        output_dir: str | None = None,
        delta: float = 0.05,
        progress_bar: bool | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, budget=budget, num_workers=num_workers, seed=seed, feedback=feedback,
                         safeguard=safeguard, checkpoint_every=checkpoint_every, resume=resume,
                         output_dir=output_dir, delta=delta, progress_bar=progress_bar)
        for key, value, low in (("num_train", num_train, 1), ("num_heldout", num_heldout, 0),
                                ("num_transfer", num_transfer, 0), ("shots", shots, 0),
                                ("subspace_dim", subspace_dim, 1), ("max_new_bytes", max_new_bytes, 1),
                                ("batch_size", batch_size, 1), ("poisoning_k", poisoning_k, 1)):
            check_int(key, value, low)
        check_choice("train_split", train_split, SPLITS)
        check_choice("heldout_split", heldout_split, SPLITS)
        check_choice("norm_granularity", norm_granularity, NORM_GRANULARITIES)
        check_choice("projection", projection, PROJECTIONS)
        places = check_places(where)
        for key, value in (("scale", scale), ("box", box), ("secret_bits", secret_bits)):
            if value is not None and not (isinstance(value, int | float) and 0 < value < float("inf")):
                raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive finite number")
        if safeguard and num_heldout == 0:
            raise ConfigError("safeguard=True needs held-out problems: num_heldout=0 leaves none (or safeguard=False)")
        parse_math_spec(data)  # a bad spec fails here, before training
        if transfer is not None:
            parse_math_spec(transfer)
        self.data, self.train_split, self.num_train = data, train_split, num_train
        self.heldout_split, self.num_heldout = heldout_split, num_heldout
        self.transfer, self.num_transfer, self.shots = transfer, num_transfer, shots
        self.where, self.tensors, self.norm_granularity = places, tensors, norm_granularity
        self.scale, self.box = float(scale), box
        self.subspace_dim, self.projection = subspace_dim, projection
        self.max_new_bytes, self.batch_size = max_new_bytes, batch_size
        self.poisoning_k, self.secret_bits = poisoning_k, float(secret_bits)
        self._space: SearchSpace | None = None
        self._module: LightningModule | None = None
        self._problems: ProblemSets | None = None
        self._transfer_batches: list[Any] | None = None
        self._transfer_before: float | None = None
        self.bounds: dict[str, Any] | None = None
        """The bound table of the last search (:func:`litlab.evolution.privacy.bounds_table`)."""

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        refuse_sharded_parameters(trainer.strategy)

    # ------------------------------------------------------------------ what is searched, how it is scored
    def build_space(self, pl_module: LightningModule) -> SearchSpace:
        self._module = pl_module
        self._space = modification_space(pl_module, self.where, self.tensors, self.norm_granularity, self.scale,
                                         self.box, self.subspace_dim, self.projection, self.seed)
        return self._space

    def _fitness(self) -> Fitness:
        demonstrations = self._problems.demonstrations if self._problems is not None else []
        return Fitness(MathAccuracy(demonstrations, self.max_new_bytes))

    def build_fitness(self, trainer: Trainer, pl_module: LightningModule) -> Fitness:
        if not callable(getattr(pl_module, "generate_batch", None)):
            raise ConfigError(f"BBoxER needs a language model with generate_batch(); {type(pl_module).__name__} "
                              "has none")
        return self._fitness()

    def evaluation_data(self, trainer: Trainer, pl_module: LightningModule, limit: int) -> EvaluationData:
        refuse_sharded_parameters(trainer.strategy)
        self._problems = problems = load_problem_sets(
            self.data, self.train_split, self.num_train, self.heldout_split, self.num_heldout, self.transfer,
            self.num_transfer, self.shots, self.seed)

        def batches(items: list[MathProblem]) -> list[list[MathProblem]]:
            cut = problem_batches(items, self.batch_size)
            return shard(cut[:limit] if limit else cut)

        held = batches(problems.heldout) if problems.heldout else None
        self._transfer_batches = batches(problems.transfer) if problems.transfer else None
        self._transfer_before = None
        if self._transfer_batches is not None:  # the model is still the trained one here
            self._transfer_before = self._fitness().evaluate(pl_module, self._transfer_batches).value
        return EvaluationData(batches(problems.train), held, len(problems.train), len(problems.heldout))

    def fitness_name(self) -> str:
        return "accuracy"

    def report_extras(self) -> dict[str, Any]:
        return {"metric": "accuracy", "data": self.data, "train_split": self.train_split,
                "heldout_split": self.heldout_split, "transfer": self.transfer, "where": self.where,
                "shots": self.shots}

    def after_search(self, trainer: Trainer, pl_module: LightningModule, result: EvolutionResult,
                     data: EvaluationData, out: Path | None) -> dict[str, Any]:
        """The bound table and the transfer accuracy of the best candidate (every rank: a collective)."""
        self.bounds = bounds_table(result.bits, result.num_examples, result.history, result.feedback, result.delta,
                                   self.poisoning_k, self.secret_bits, result.mode)
        return {"bounds": self.bounds, "bounds_markdown": format_bounds(self.bounds),
                "transfer_before": self._transfer_before, "transfer_after": self._transfer_after()}

    def _transfer_after(self) -> float | None:
        """Transfer accuracy of the best candidate (applied if kept, applied for the measurement otherwise)."""
        model = self._module
        if self._transfer_batches is None or self.result is None or self._space is None or model is None:
            return None
        if self._space.is_identity(self.result.best):
            return self._transfer_before
        if self.kept:
            return self._fitness().evaluate(model, self._transfer_batches).value
        with self._space.applied(self.result.best):
            return self._fitness().evaluate(model, self._transfer_batches).value
