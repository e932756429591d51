"""The evaluation figure keeps ranking and beyond-accuracy metrics apart, shows the gaps'
intervals, and lands beside the tables whole."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hybridrec import plots
from hybridrec.tables import Warehouse

MODELS = ["hybrid", "als", "cooc", "text", "popularity"]


@pytest.fixture
def frames():
    rows = []
    for segment in plots.SEGMENTS:
        for i, model in enumerate(MODELS):
            rows += [(model, "ndcg", 10, 0.10 - 0.01 * i, segment)]
            rows += [(model, "hr", 10, 0.20 - 0.02 * i, segment)]
    for i, model in enumerate(MODELS):
        rows += [(model, "coverage", 10, 0.5 + 0.1 * i, "all")]
        rows += [(model, "diversity", 10, 0.6, "all")]
        rows += [(model, "novelty", 10, 4.0 + i, "all")]
    metrics = pd.DataFrame(rows, columns=["model", "metric", "k", "value", "segment"])
    gaps = pd.DataFrame(
        [
            (model, metric, 10, 0.01 * (i + 1), 0.01 * i - 0.005, 0.01 * (i + 2), segment)
            for segment in plots.SEGMENTS
            for metric in ("ndcg", "hr")
            for i, model in enumerate(MODELS[1:])
        ],
        columns=["model", "metric", "k", "difference", "ci_low", "ci_high", "segment"],
    )
    return metrics, gaps


def test_no_axis_mixes_ranking_with_beyond_accuracy_metrics(frames):
    metrics, gaps = frames
    fig = plots.metrics_figure(metrics, gaps, 10)

    heights = [{round(bar.get_height(), 6) for bar in ax.patches} for ax in fig.axes if ax.patches]
    novelty = {4.0, 5.0, 6.0, 7.0, 8.0}
    ranking = [h for h in heights if h & {0.1, 0.2}]
    assert ranking and all(not h & novelty for h in ranking)
    assert any(h == novelty for h in heights)  # novelty alone on its axis
    plots.close(fig)


def test_the_gaps_carry_their_intervals_as_error_bars(frames):
    metrics, gaps = frames
    fig = plots.metrics_figure(metrics, gaps, 10)

    gap_axes = [ax for ax in fig.axes if "hybrid minus baseline" in ax.get_title()]
    assert len(gap_axes) == 2
    for ax in gap_axes:
        bars = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
        assert len(bars) == 4  # one per baseline, error bars on each
        low, high = bars[0].errorbar.lines[2][0].get_segments()[0][:, 1]
        assert (round(low, 6), round(high, 6)) == (-0.005, 0.02)  # ci_low, ci_high vs als
    plots.close(fig)


def test_the_report_lands_whole_beside_the_tables_and_a_retry_replaces_it(spark, tmp_path):
    warehouse = Warehouse(spark, str(tmp_path), "db", "r1")

    first = plots.write_report(warehouse, "r1", "metrics_by_model.png", b"\x89PNG first")
    second = plots.write_report(warehouse, "r1", "metrics_by_model.png", b"\x89PNG second")

    assert first == second == f"{tmp_path}/db.db/_reports/run_id=r1/metrics_by_model.png"
    folder = Path(first).parent
    assert Path(first).read_bytes() == b"\x89PNG second"
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".crc")) == [
        "metrics_by_model.png"
    ]
