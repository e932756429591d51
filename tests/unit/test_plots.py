"""The evaluation figure keeps ranking and beyond-accuracy metrics apart, shows the gaps'
intervals, and lands beside the tables whole."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from hybridrec.evaluation import plots
from hybridrec.store.tables import Warehouse

MODELS = ["hybrid", "als", "cooc", "text", "popularity"]
RANKING = ["ndcg", "hr", "precision"]
NOVELTY = {4.0, 5.0, 6.0, 7.0, 8.0}


@pytest.fixture
def frames():
    rows = []
    for segment in plots.SEGMENTS:
        for i, model in enumerate(MODELS):
            rows += [(model, "ndcg", 10, 0.10 - 0.01 * i, segment)]
            rows += [(model, "hr", 10, 0.20 - 0.02 * i, segment)]
            rows += [(model, "precision", 10, 0.02 - 0.002 * i, segment)]
    for i, model in enumerate(MODELS):
        rows += [(model, "coverage", 10, 0.5 + 0.1 * i, "all")]
        rows += [(model, "diversity", 10, 0.6, "all")]
        rows += [(model, "novelty", 10, 4.0 + i, "all")]
    metrics = pd.DataFrame(rows, columns=["model", "metric", "k", "value", "segment"])
    gaps = pd.DataFrame(
        [
            (model, metric, 10, 300, 0.01 * (i + 1), 0.01 * i - 0.005, 0.01 * (i + 2), segment)
            for segment in plots.SEGMENTS
            for metric in RANKING
            for i, model in enumerate(MODELS[1:])
        ],
        columns=["model", "metric", "k", "users", "difference", "ci_low", "ci_high", "segment"],
    )
    return metrics, gaps


@pytest.fixture
def figure(frames):
    fig = plots.metrics_figure(*frames, k=10, confidence=0.95)
    yield fig
    plots.close(fig)


def _heights(ax) -> set[float]:
    return {round(bar.get_height(), 6) for bar in ax.patches}


def test_no_axis_mixes_ranking_with_beyond_accuracy_metrics(figure):
    ranking = [ax for ax in figure.axes if ax.get_title().startswith("ranking metrics@10")]
    assert len(ranking) == 3  # one per segment
    for ax in ranking:
        assert [t.get_text() for t in ax.get_xticklabels()] == RANKING
        assert 0.1 in _heights(ax) and 0.2 in _heights(ax)
        assert not _heights(ax) & NOVELTY
    beyond = {
        ax.get_title(): _heights(ax)
        for ax in figure.axes
        if "all test users" in ax.title.get_text()
    }
    assert beyond["novelty@10, all test users"] == NOVELTY  # novelty alone on its axis
    assert beyond["coverage@10, all test users"] == {0.5, 0.6, 0.7, 0.8, 0.9}


def test_models_keep_their_order_and_the_hybrid_stands_out(figure):
    legend = figure.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == MODELS
    novelty = next(ax for ax in figure.axes if ax.get_title().startswith("novelty"))
    assert [t.get_text() for t in novelty.get_xticklabels()] == MODELS
    outlined = [bar.get_linewidth() > 1 for bar in novelty.patches]
    assert outlined == [True, False, False, False, False]


def test_the_gaps_carry_their_intervals_as_error_bars(figure):
    gap_axes = [ax for ax in figure.axes if ax.get_title().startswith("hybrid minus baseline")]
    assert [ax.get_title().splitlines()[0] for ax in gap_axes] == [
        "hybrid minus baseline, ndcg@10",
        "hybrid minus baseline, hr@10",
    ]
    for ax in gap_axes:
        assert "95% interval" in ax.get_title()
        bars = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
        assert len(bars) == 4  # one per baseline, error bars on each
        low, high = bars[0].errorbar.lines[2][0].get_segments()[0][:, 1]
        assert (round(low, 6), round(high, 6)) == (-0.005, 0.02)  # ci_low, ci_high vs als
        assert any(line.get_ydata()[0] == 0 for line in ax.lines)  # the zero line


def test_the_report_lands_whole_beside_the_tables_and_a_retry_replaces_it(spark, tmp_path, figure):
    warehouse = Warehouse(spark, str(tmp_path), "db", "r1")
    png = plots.png_bytes(figure)

    first = plots.write_report(warehouse, "r1", "metrics_by_model.png", b"\x89PNG an old try")
    second = plots.write_report(warehouse, "r1", "metrics_by_model.png", png)

    assert first == second == f"{tmp_path}/db.db/_reports/run_id=r1/metrics_by_model.png"
    assert Path(first).read_bytes() == png
    assert matplotlib.image.imread(io.BytesIO(Path(first).read_bytes())).ndim == 3
    # Only the plot and the checksum the local Hadoop file system keeps beside it: no temp file.
    assert {p.name for p in Path(first).parent.iterdir()} <= {
        "metrics_by_model.png",
        ".metrics_by_model.png.crc",
    }


def test_debias_curve_figure_plots_ndcg_against_each_beyond_accuracy_metric():
    curve = pd.DataFrame(
        {
            "debias": [0.0, 0.3, 0.6],
            "served": [False, True, False],
            "ndcg": [0.30, 0.29, 0.25],
            "coverage": [0.6, 0.8, 0.9],
            "diversity": [0.2, 0.3, 0.4],
            "tail_hr": [0.0, 0.1, 0.2],
            "novelty": [4.0, 5.0, 6.0],
        }
    )
    figure = plots.debias_curve_figure(curve, 10)
    try:
        axes = figure.axes
        assert [ax.get_xlabel() for ax in axes] == list(plots.CURVE_AXES.values())
        for ax, metric in zip(axes, plots.CURVE_AXES, strict=True):
            x, y = ax.lines[0].get_data()
            assert list(x) == curve[metric].tolist() and list(y) == curve["ndcg"].tolist()
            assert [t.get_text() for t in ax.texts] == ["0", "0.3", "0.6"]
    finally:
        plots.close(figure)
