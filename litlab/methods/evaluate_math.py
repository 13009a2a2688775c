"""``litlab evaluate_math``: exact match of a language model on math word problems, with a k-shot chain-of-thought
prompt and optional self-consistency (arXiv 2203.11171: majority vote over m sampled solutions).

The prompt is ``k`` solved problems of the *train* split (drawn at random, seeded, in the few-shot format of
:func:`litlab.text.gsm8k.format_demonstration`) followed by ``Question: <question>\\nAnswer:``; the model's
solution ends at the blank line; its final answer (``#### N``, "The answer is N", else the last number) is
compared exactly with the reference (:mod:`litlab.evaluation.math_answer`). Generation is batched, and the
few-shot prefix is computed once per batch (shared-prefix reuse); the scoring itself is
:mod:`litlab.evaluation.math_scoring` (re-exported here).

With ``prompts > 1`` the score is measured for that many independent draws of the k demonstrations, which
shows how much the choice of demonstrations matters (what EPPO optimizes): the report gives each draw's
accuracy, their mean and standard deviation. Each accuracy comes with its binomial standard error
``sqrt(p(1-p)/n)`` over the ``n`` problems.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from litlab.datamodules.math_corpus import parse_math_spec
from litlab.errors import ConfigError, check_int
from litlab.evaluation.math_scoring import binomial_se, draw_demonstrations, math_scores
from litlab.lightning_modules.loading import load_model

__all__ = ["binomial_se", "draw_demonstrations", "evaluate_math", "format_math_report", "math_scores"]


def evaluate_math(
    *,
    model: str,
    data: str = "procedural_math",
    shots: int = 0,
    samples: int = 1,
    temperature: float | None = None,
    prompts: int = 1,
    split: str = "test",
    num_problems: int | None = None,
    seed: int = 0,
    max_new_bytes: int = 320,
    batch_size: int = 32,
    output: str | None = None,
) -> dict[str, Any]:
    """Exact match on math word problems with a k-shot chain-of-thought prompt; prints accuracy ± standard error.

    Args:
        model: A ``litlab fit`` checkpoint of a language model, or a Hugging Face model directory.
        data: ``procedural_math[:key=value,...]`` or ``<file>.jsonl[:key=value,...]`` (GSM8K format; keys:
            ``num_train``, ``num_selection``, ``num_test``, ``split_seed``, ...; see
            :mod:`litlab.datamodules.math_corpus`). Use the spec the model was trained with.
        shots: Solved train problems in the prompt (0: zero-shot).
        samples: Sampled solutions per problem; > 1 scores their majority answer (self-consistency).
        temperature: Sampling temperature (default: 0, greedy, for one sample; 0.7 for several).
        prompts: Independent random draws of the ``shots`` demonstrations (accuracy mean ± sd over them).
        split: ``test`` or ``selection``.
        num_problems: Score only the first problems of the split (default: all).
        seed: Seed of the demonstration draws (draw r uses ``seed + r``) and of the sampling.
        max_new_bytes: Longest solution.
        batch_size: Solutions generated together.
        output: Also write the report as JSON to this file.

    Returns:
        The report.
    """
    for name, value, low in (("shots", shots, 0), ("samples", samples, 1), ("prompts", prompts, 1),
                             ("seed", seed, 0), ("max_new_bytes", max_new_bytes, 1), ("batch_size", batch_size, 1)):
        check_int(name, value, low)
    if split not in ("test", "selection"):
        raise ConfigError(f"split={split!r} is not allowed: choose 'test' or 'selection'")
    temperature = (0.7 if samples > 1 else 0.0) if temperature is None else temperature
    dataset, _ = parse_math_spec(data)
    problems = dataset.problems(split)[:num_problems]
    if not problems:
        raise ConfigError(f"data={data!r} has no {split} problems")
    pool = dataset.problems("train")
    lm = load_model(model)
    start = time.perf_counter()
    draws = []
    for r in range(prompts if shots else 1):
        demos = draw_demonstrations(pool, shots, seed + r)
        scores = math_scores(lm, problems, demos, samples, temperature, max_new_bytes, seed, batch_size)
        accuracy = statistics.fmean(scores)
        draws.append({"seed": seed + r, "accuracy": accuracy, "se": binomial_se(accuracy, len(scores)),
                      "demonstrations": [d.question for d in demos]})
    accuracies = [d["accuracy"] for d in draws]
    report = {
        "model": model, "data": data, "split": split, "num_problems": len(problems), "shots": shots,
        "samples": samples, "temperature": temperature, "prompts": len(draws),
        "accuracy_mean": statistics.fmean(accuracies),
        "accuracy_sd": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "draws": draws, "seconds": time.perf_counter() - start,
    }
    print(format_math_report(report))
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=1) + "\n")
    return report


def format_math_report(report: dict[str, Any]) -> str:
    """One line per draw, then the summary."""
    lines = [f"draw {d['seed']}: exact match {d['accuracy']:.3f} ± {d['se']:.3f}" for d in report["draws"]]
    kind = "zero-shot" if report["shots"] == 0 else f"{report['shots']}-shot"
    if report["samples"] > 1:
        kind += f", self-consistency over {report['samples']} samples at T={report['temperature']}"
    spread = f" (sd {report['accuracy_sd']:.3f} over {report['prompts']} prompts)" if report["prompts"] > 1 else \
        f" ± {report['draws'][0]['se']:.3f}"
    lines.append(f"{kind}: exact match {report['accuracy_mean']:.3f}{spread} on {report['num_problems']} "
                 f"{report['split']} problems ({report['seconds']:.1f} s)")
    return "\n".join(lines)
