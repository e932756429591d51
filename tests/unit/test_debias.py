"""The popularity de-biasing re-rank: which strength the score job serves."""

from __future__ import annotations

import pandas as pd
import pytest

from hybridrec.config.loader import load_config
from hybridrec.ranking.tuning import choose_debias
from udfs.rerank import debiased

PICK = pd.Series(
    {
        "cf": 0.2,
        "cooc": 0.2,
        "text": 0.0,
        "recent": 0.4,
        "pop": 0.2,
        "next": 0.0,
        "recent_sharpness": 40.0,
        "validation_ndcg": 0.500,
        "validation_hr": 0.700,
    }
)
# Validation NDCG at each strength of the grid below: the loss grows, but not monotonically.
CURVE = {0.1: 0.499, 0.2: 0.496, 0.3: 0.489, 0.4: 0.4952, 0.6: 0.40}


def _config(tmp_path, loss: float, grid: str = "[0.0, 0.1, 0.2, 0.3, 0.4, 0.6]"):
    return load_config(
        [],
        [
            f"run.work_dir={tmp_path}",
            f"score.max_ndcg_loss={loss}",
            f"score.debias_grid={grid}",
        ],
    )


def _tuner(calls: list):
    def tune(sharpness: float, points: list[dict[str, float]]) -> pd.DataFrame:
        calls.append((sharpness, points))
        strengths = [p["debias"] for p in points]
        return pd.DataFrame(
            {
                "combo": range(len(points)),
                "ndcg": [CURVE[s] for s in strengths],
                "hr": [0.6] * len(points),
                "users": [100] * len(points),
            }
        )

    return tune


def test_debiased_adds_the_strength_and_keeps_the_weights():
    weights = {"cf": 0.5, "cooc": 0.0, "text": 0.0, "recent": 0.3, "pop": 0.2}
    assert debiased(weights, 0.3) == {**weights, "debias": 0.3}


@pytest.mark.parametrize(
    ("loss", "expected"),
    [(0.01, 0.4), (0.005, 0.1), (0.0001, 0.0), (0.5, 0.6)],
)
def test_the_strongest_strength_within_the_ndcg_budget_is_picked(tmp_path, loss, expected):
    calls: list = []
    chosen, curve = choose_debias(PICK, _tuner(calls), _config(tmp_path, loss))
    assert curve["debias"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.6]
    assert chosen["debias"] == pytest.approx(expected)
    if expected:
        assert chosen["validation_ndcg"] == pytest.approx(CURVE[expected])
    else:
        assert chosen["validation_ndcg"] == pytest.approx(PICK["validation_ndcg"])
    # One tuning pass at the pick's sharpness over the grid's non-zero strengths.
    ((sharpness, points),) = calls
    assert sharpness == 40.0
    assert [p["debias"] for p in points] == [0.1, 0.2, 0.3, 0.4, 0.6]
    assert all(p["cf"] == 0.2 and p["pop"] == 0.2 for p in points)


def test_no_budget_means_no_re_rank_and_no_tuning(tmp_path):
    calls: list = []
    chosen, curve = choose_debias(PICK, _tuner(calls), _config(tmp_path, 0.0))
    assert chosen["debias"] == 0.0 and calls == [] and curve.empty
