"""The loss attack's AUC, TPR at low FPR and AUC standard error, against scikit-learn and hand counts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from litlab.errors import ConfigError
from litlab.evaluation.membership_inference import (
    hanley_mcneil_se,
    loss_attack,
    roc_auc,
    solution_losses,
    tpr_at_fpr,
)
from litlab.text.gsm8k import MathProblem

pytestmark = pytest.mark.usefixtures("one_thread")


def test_auc_equals_scikit_learn_with_ties():
    rng = np.random.RandomState(0)
    members, others = rng.randint(0, 5, 40).astype(float), rng.randint(0, 4, 70).astype(float)
    expected = roc_auc_score([1] * 40 + [0] * 70, np.concatenate([members, others]))
    assert roc_auc(members, others) == pytest.approx(expected, abs=1e-12)
    assert roc_auc([1, 2], [3, 4]) == 0.0 and roc_auc([3, 4], [1, 2]) == 1.0 and roc_auc([1, 1], [1]) == 0.5


def test_tpr_at_fpr_by_hand_and_against_the_roc_curve():
    others = [0.1 * i for i in range(10)]  # 0.0 ... 0.9
    members = [0.95, 0.85, 0.75, 0.05]
    assert tpr_at_fpr(members, others, 0.0) == 0.25  # above 0.9: only 0.95
    assert tpr_at_fpr(members, others, 0.1) == 0.5  # one non-member (0.9) may be above: threshold 0.8
    assert tpr_at_fpr(members, others, 0.25) == 0.75  # two may: threshold 0.7
    rng = np.random.RandomState(1)
    m, o = rng.normal(0.5, 1, 300), rng.normal(0, 1, 500)
    fpr, tpr, _ = roc_curve([1] * 300 + [0] * 500, np.concatenate([m, o]))
    for target in (0.01, 0.05, 0.2):
        assert tpr_at_fpr(m, o, target) == pytest.approx(tpr[fpr <= target].max())


def test_loss_attack_flags_lower_member_losses_and_its_standard_error():
    result = loss_attack([0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7])
    assert result["auc"] == 1.0 and result["tpr_at_fpr"]["0.01"] == 1.0 and result["fpr_resolution"] == 0.25
    # Hanley & McNeil (1982), AUC 0.8, 50 + 50 cases: Q1 = 0.8/1.2, Q2 = 1.28/1.8;
    # (0.16 + 49·0.02667 + 49·0.07111) / 2500 = 0.0019804, whose root is 0.0445
    q1, q2 = 0.8 / 1.2, 1.28 / 1.8
    expected = np.sqrt((0.16 + 49 * (q1 - 0.64) + 49 * (q2 - 0.64)) / 2500)
    assert hanley_mcneil_se(0.8, 50, 50) == pytest.approx(expected) == pytest.approx(0.0445, abs=1e-4)
    with pytest.raises(ConfigError, match="members and non-members"):
        loss_attack([], [1.0])
    with pytest.raises(ConfigError, match="finite"):
        loss_attack([float("nan")], [1.0])


def test_solution_losses_score_the_solution_given_the_question():
    class Recorder:
        def score(self, contexts, continuations, batch_size=16):
            self.seen = (contexts, continuations)
            return [-2.0 * len(c) for c in continuations]

    lm = Recorder()
    problem = MathProblem("What is 2 + 3?", "2 + 3 = <<2+3=5>>5", "5")
    assert solution_losses(lm, [problem]) == [2.0]
    assert lm.seen == ([b"Question: What is 2 + 3?\nAnswer:"], [b" 2 + 3 = <<2+3=5>>5\n#### 5\n\n"])
