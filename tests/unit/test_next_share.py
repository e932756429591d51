"""The what-came-next part: which share of it the score job mixes into the grid's pick."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hybridrec.config.errors import ConfigError
from hybridrec.config.loader import load_config
from hybridrec.ranking import scoring
from hybridrec.ranking.tuning import choose_next
from udfs.ranking_kernel import PARTS

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


def _config(tmp_path, grid: str, confidence: float = 0.95):
    return load_config(
        [],
        [
            f"run.work_dir={tmp_path}",
            f"score.next_share_grid={grid}",
            f"score.next_confidence={confidence}",
        ],
    )


def _tuner(calls: list, curve: dict[float, tuple[float, float]]):
    """``curve``: per share, its validation NDCG and the standard error of its gain over the
    pick (share 0, NDCG 0.300)."""

    def tune(sharpness: float, points: list[dict[str, float]], *, paired=False) -> pd.DataFrame:
        calls.append((sharpness, points, paired))
        ndcg, se = zip(*[curve.get(p["next"], (0.300, 0.0)) for p in points], strict=True)
        return pd.DataFrame(
            {
                "combo": range(len(points)),
                "ndcg": ndcg,
                "hr": [0.6] * len(points),
                "users": [100] * len(points),
                "ndcg_gain": [n - 0.300 for n in ndcg],
                "ndcg_gain_se": se,
            }
        )

    return tune


@pytest.mark.parametrize(
    ("curve", "share"),
    [
        ({0.05: (0.31, 0.004), 0.1: (0.33, 0.01), 0.2: (0.32, 0.004)}, 0.1),
        ({0.05: (0.32, 0.004), 0.1: (0.32, 0.004), 0.2: (0.31, 0.0)}, 0.05),  # tie: the smaller
        ({0.05: (0.30, 0.0), 0.1: (0.29, 0.01), 0.2: (0.25, 0.01)}, 0.0),  # none beats the pick
        # 0.33 gains more, but within its noise (0.03 < 1.96 x 0.02): 0.31's clear gain wins.
        ({0.05: (0.31, 0.004), 0.1: (0.33, 0.02), 0.2: (0.29, 0.01)}, 0.05),
        # A gain of 1.9% at 1.7 standard errors is noise at 95%.
        ({0.2: (0.3057, 0.0034)}, 0.0),
    ],
)
def test_the_best_share_that_clearly_beats_the_pick_is_mixed_in(tmp_path, curve, share):
    calls: list = []
    cfg = _config(tmp_path, "[0.0, 0.05, 0.1, 0.2]")
    chosen, tried = choose_next(PICK, _tuner(calls, curve), cfg)

    assert chosen["next"] == pytest.approx(share)
    assert chosen["cf"] == pytest.approx(0.5 * (1 - share))
    assert chosen["pop"] == pytest.approx(0.2 * (1 - share))
    assert sum(chosen[p] for p in PARTS) == pytest.approx(1)
    assert chosen["validation_ndcg"] == pytest.approx(curve.get(share, (0.300,))[0])
    assert tried["next_share"].tolist() == [0.0, 0.05, 0.1, 0.2]
    # One paired pass at the pick's sharpness, the pick itself first.
    ((sharpness, points, paired),) = calls
    assert sharpness == 40.0 and paired
    assert [p["next"] for p in points] == [0.0, 0.05, 0.1, 0.2]


def test_confidence_zero_takes_any_gain(tmp_path):
    cfg = _config(tmp_path, "[0.0, 0.2]", confidence=0.0)
    chosen, _ = choose_next(PICK, _tuner([], {0.2: (0.3057, 0.0034)}), cfg)
    assert chosen["next"] == pytest.approx(0.2)


def test_a_grid_of_zero_only_keeps_the_pick_without_tuning(tmp_path):
    calls: list = []
    chosen, tried = choose_next(PICK, _tuner(calls, {}), _config(tmp_path, "[0.0]"))

    assert chosen["next"] == 0.0 and chosen["cf"] == 0.5
    assert calls == [] and tried.empty


def test_a_share_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="next_share_grid"):
        _config(tmp_path, "[0.0, 1.5]")


def test_paired_summary_gains_are_per_user_differences_from_the_first_set(spark):
    # Target ranks of three users under three weight sets; k = 2, so NDCG is 1, 1/log2(3) or 0.
    ranks = spark.createDataFrame(
        [
            (0, "u1", 1), (0, "u2", 3), (0, "u3", 2),
            (1, "u1", 1), (1, "u2", 1), (1, "u3", 2),
            (2, "u1", 5), (2, "u2", 1), (2, "u3", 1),
        ],
        "combo int, user_id string, target_rank long",
    )  # fmt: skip

    summary = scoring.summarise_ranks(ranks, 2, paired=True).toPandas().set_index("combo")
    plain = scoring.summarise_ranks(ranks, 2).toPandas().set_index("combo")

    second = 1 / math.log2(3)
    gains = {0: [0, 0, 0], 1: [0, 1, 0], 2: [-1, 1, 1 - second]}
    for combo, gain in gains.items():
        assert summary.loc[combo, "ndcg_gain"] == pytest.approx(np.mean(gain))
        se = np.std(gain, ddof=1) / math.sqrt(3)
        assert summary.loc[combo, "ndcg_gain_se"] == pytest.approx(se)
    assert summary.loc[0, "ndcg"] == pytest.approx((1 + second) / 3)
    assert "ndcg_gain" not in plain
    pd.testing.assert_frame_equal(summary[plain.columns].sort_index(), plain.sort_index())
