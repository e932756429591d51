"""The what-came-next part: which share of it the score job mixes into the grid's pick."""

from __future__ import annotations

import pandas as pd
import pytest

from hybridrec.config import load_config
from hybridrec.config_errors import ConfigError
from jobs.score import choose_next
from udfs.topk import PARTS

PICK = pd.Series(
    {
        "cf": 0.5,
        "cooc": 0.3,
        "text": 0.0,
        "recent": 0.0,
        "pop": 0.2,
        "next": 0.0,
        "recent_sharpness": 40.0,
        "validation_ndcg": 0.300,
        "validation_hr": 0.500,
    }
)


def _config(tmp_path, grid: str):
    return load_config([], [f"run.work_dir={tmp_path}", f"score.next_share_grid={grid}"])


def _tuner(calls: list, curve: dict[float, float]):
    def tune(sharpness: float, points: list[dict[str, float]]) -> pd.DataFrame:
        calls.append((sharpness, points))
        return pd.DataFrame(
            {
                "combo": range(len(points)),
                "ndcg": [curve[p["next"]] for p in points],
                "hr": [0.6] * len(points),
                "users": [100] * len(points),
            }
        )

    return tune


@pytest.mark.parametrize(
    ("curve", "share"),
    [
        ({0.05: 0.31, 0.1: 0.33, 0.2: 0.32}, 0.1),
        ({0.05: 0.32, 0.1: 0.32, 0.2: 0.31}, 0.05),  # a tie goes to the smaller share
        ({0.05: 0.30, 0.1: 0.29, 0.2: 0.25}, 0.0),  # no share beats the pick alone
    ],
)
def test_the_share_with_the_best_validation_ndcg_is_mixed_in(tmp_path, curve, share):
    calls: list = []
    cfg = _config(tmp_path, "[0.0, 0.05, 0.1, 0.2]")
    chosen, tried = choose_next(PICK, _tuner(calls, curve), cfg)

    assert chosen["next"] == pytest.approx(share)
    assert chosen["cf"] == pytest.approx(0.5 * (1 - share))
    assert chosen["pop"] == pytest.approx(0.2 * (1 - share))
    assert sum(chosen[p] for p in PARTS) == pytest.approx(1)
    assert chosen["validation_ndcg"] == pytest.approx(curve.get(share, PICK["validation_ndcg"]))
    assert tried["next_share"].tolist() == [0.05, 0.1, 0.2]
    # One pass at the pick's sharpness; share 0 is the pick itself, already scored.
    ((sharpness, points),) = calls
    assert sharpness == 40.0
    assert [p["next"] for p in points] == [0.05, 0.1, 0.2]


def test_a_grid_of_zero_only_keeps_the_pick_without_tuning(tmp_path):
    calls: list = []
    chosen, tried = choose_next(PICK, _tuner(calls, {}), _config(tmp_path, "[0.0]"))

    assert chosen["next"] == 0.0 and chosen["cf"] == 0.5
    assert calls == [] and tried.empty


def test_a_share_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="next_share_grid"):
        _config(tmp_path, "[0.0, 1.5]")
