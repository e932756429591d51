"""The grid's pick: among the points within noise of the best, the one nearest the prior."""
# The configured prior unless a test says otherwise: its distances are easy to check by hand.

from __future__ import annotations

import pandas as pd
import pytest

from hybridrec.config.loader import load_config
from hybridrec.ranking.tuning import choose_near_prior
from udfs.ranking_kernel import PARTS

# The configured weights (the prior) of conf/base.yaml: cf .2, cooc .2, text .1, recent .5.
GRID = [
    {**dict.fromkeys(PARTS, 0.0), "pop": 1.0},  # far from the prior
    {**dict.fromkeys(PARTS, 0.0), "cf": 0.2, "cooc": 0.2, "text": 0.1, "recent": 0.5},  # on it
    {**dict.fromkeys(PARTS, 0.0), "cf": 0.5, "recent": 0.5},  # between
]


def _config(tmp_path, *settings: str, prior: str = "configured"):
    return load_config(
        [], [f"run.work_dir={tmp_path}", f"score.near_best_prior={prior}", *settings]
    )


def _results(ndcg: dict[tuple[float, int], float], grid=GRID) -> pd.DataFrame:
    """The grid's rows best first, as ``_pick`` hands them over."""
    rows = [
        {"recent_sharpness": s, "combo": c, "ndcg": n, "hr": 2 * n, "users": 300, **grid[c]}
        for (s, c), n in ndcg.items()
    ]
    return pd.DataFrame(rows).sort_values("ndcg", ascending=False, kind="stable")


def _tuner(calls: list, se: dict[int, float], ndcg: dict[int, float], grid=GRID):
    """Paired over the first point: each grid point's NDCG and its gain's standard error."""

    def tune(sharpness: float, points: list[dict[str, float]], *, paired=False) -> pd.DataFrame:
        calls.append((sharpness, points, paired))
        combos = [grid.index(p) for p in points]
        first = ndcg[combos[0]]
        return pd.DataFrame(
            {
                "combo": range(len(points)),
                "ndcg": [ndcg[c] for c in combos],
                "hr": 0.5,
                "users": 300,
                "ndcg_gain": [ndcg[c] - first for c in combos],
                "ndcg_gain_se": [se[c] for c in combos],
            }
        )

    return tune


def test_a_lead_within_noise_goes_to_the_point_nearest_the_prior(tmp_path):
    ndcg = {0: 0.30, 1: 0.29, 2: 0.295}
    calls: list = []
    picked, curve = choose_near_prior(
        _results({(40.0, c): n for c, n in ndcg.items()}),
        GRID,
        _tuner(calls, {0: 0.0, 1: 0.02, 2: 0.02}, ndcg),
        _config(tmp_path),
    )
    assert picked["combo"].tolist() == [1] and picked["ndcg"].tolist() == [0.29]
    # one paired call at the best's sharpness, the best first
    assert [(s, paired) for s, _, paired in calls] == [(40.0, True)]
    assert calls[0][1][0] == GRID[0]
    assert curve["within_noise"].all()
    assert curve.set_index("combo")["prior_distance"].to_dict() == pytest.approx(
        {0: 2.0, 1: 0.0, 2: 0.6}
    )


def test_a_clear_lead_keeps_the_best(tmp_path):
    ndcg = {0: 0.30, 1: 0.25, 2: 0.295}
    picked, curve = choose_near_prior(
        _results({(40.0, c): n for c, n in ndcg.items()}),
        GRID,
        _tuner([], {0: 0.0, 1: 0.01, 2: 0.01}, ndcg),
        _config(tmp_path),
    )
    # 1 is 5 standard errors behind; 2 half of one, and nearer the prior than the best
    assert picked["combo"].tolist() == [2]
    assert curve.set_index("combo")["within_noise"].to_dict() == {0: True, 1: False, 2: True}


def test_only_the_bests_sharpness_and_its_nearest_points_are_compared(tmp_path):
    ndcg = {0: 0.30, 1: 0.29, 2: 0.20}
    results = _results({(1.0, 0): 0.30, (1.0, 1): 0.29, (1.0, 2): 0.20, (40.0, 1): 0.299})
    calls: list = []
    picked, _ = choose_near_prior(
        results,
        GRID,
        _tuner(calls, {0: 0.0, 1: 0.05, 2: 0.2}, ndcg),
        _config(tmp_path, "score.near_best_points=2"),
    )
    assert [GRID.index(p) for p in calls[0][1]] == [0, 1]  # not 2: third at sharpness 1
    assert picked[["recent_sharpness", "combo"]].values.tolist() == [[1.0, 1]]


def test_no_margin_keeps_the_best_without_tuning_again(tmp_path):
    calls: list = []
    results = _results({(40.0, 0): 0.30, (40.0, 1): 0.2999})
    picked, curve = choose_near_prior(
        results, GRID, _tuner(calls, {}, {}), _config(tmp_path, "score.near_best_se=0")
    )
    assert picked["combo"].tolist() == [0] and curve.empty and not calls


def test_the_centre_prior_is_the_mean_of_the_points_within_noise(tmp_path):
    # Within noise: 0 (pop 1), 1 (the configured weights) and 2 (cf .5, recent .5); their mean
    # is cf .233, cooc .067, text .033, recent .333, pop .333: nearest to 1 (L1 0.73), then 2
    # (0.87), then 0 (1.33); 3 is far behind and does not move the centre.
    grid = [*GRID, {**dict.fromkeys(PARTS, 0.0), "cooc": 1.0}]
    ndcg = {0: 0.30, 1: 0.299, 2: 0.298, 3: 0.20}
    tune = _tuner([], dict.fromkeys(ndcg, 0.01), ndcg, grid)
    results = _results({(40.0, c): n for c, n in ndcg.items()}, grid)
    picked, curve = choose_near_prior(results, grid, tune, _config(tmp_path, prior="centre"))
    assert picked["combo"].tolist() == [1]
    distance = curve.set_index("combo")["prior_distance"]
    assert distance.loc[[1, 2, 0]].tolist() == pytest.approx([0.7333, 0.8667, 1.3333], abs=1e-4)
    assert not curve.set_index("combo").at[3, "within_noise"]
