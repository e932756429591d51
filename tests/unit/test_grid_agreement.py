"""benchmarks/grid_agreement.py: the agreement figures of a weight grid scored on two folds."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import grid_agreement  # noqa: E402


def _scores(validation: list[float], test: list[float]) -> pd.DataFrame:
    n = len(validation)
    return pd.DataFrame(
        {
            "recent_sharpness": [1.0] * (n // 2) + [40.0] * (n - n // 2),
            "combo": list(range(n // 2)) + list(range(n - n // 2)),
            "ndcg_validation": validation,
            "ndcg_test": test,
            "users_validation": 300,
            "users_test": 310,
        }
    )


def test_the_same_order_agrees_fully_and_the_pick_is_test_best():
    row = grid_agreement.agreement(_scores([0.1, 0.3, 0.2, 0.4], [0.2, 0.5, 0.3, 0.6]), "ndcg")
    assert row["spearman"] == pytest.approx(1.0)
    assert row["spearman at 1"] == pytest.approx(1.0) and row["spearman at 40"] == pytest.approx(
        1.0
    )
    assert row["pick's test"] == row["best test"] == 0.6 and row["pick's place on test"] == 1
    assert (row["points"], row["tuning users"], row["test users"]) == (4, 300, 310)


def test_a_reversed_order_disagrees_and_the_pick_is_last_on_test():
    row = grid_agreement.agreement(_scores([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]), "ndcg")
    assert row["spearman"] == pytest.approx(-1.0)
    assert row["pick's test"] == 0.1 and row["pick's place on test"] == 4
    assert row["mean test"] == pytest.approx(0.25)


def test_a_validation_tie_goes_to_the_earlier_sharpness_and_point():
    row = grid_agreement.agreement(_scores([0.4, 0.1, 0.4, 0.2], [0.1, 0.2, 0.3, 0.05]), "ndcg")
    assert row["pick's test"] == 0.1  # sharpness 1, point 0, not sharpness 40, point 0


def test_each_judge_is_compared_with_test_on_its_own_scores():
    scores = _scores([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]).assign(
        ndcg_pooled=[0.4, 0.3, 0.2, 0.1], users_pooled=600
    )
    assert grid_agreement.judges_of(scores) == ["validation", "pooled"]
    assert grid_agreement.judges_of(scores.drop(columns=["users_pooled"])) == ["validation"]
    pooled = grid_agreement.agreement(scores, "ndcg", "pooled")
    assert pooled["spearman"] == pytest.approx(1.0) and pooled["tuning users"] == 600
    assert grid_agreement.agreement(scores, "ndcg")["spearman"] == pytest.approx(-1.0)
