"""The evaluation figure, and report files written beside the tables.

Ranking metrics (0-1) and beyond-accuracy metrics (coverage 0-1, diversity 0-2, novelty in
bits) never share an axis: on one linear axis novelty's ~5 flattens NDCG's ~0.05 to nothing.
The hybrid's gaps carry their paired intervals as error bars, since a gap is only news when its
interval leaves zero.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")  # batch job: no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hybridrec.constants import HYBRID, MODELS  # noqa: E402
from hybridrec.store.tables import Warehouse  # noqa: E402

log = logging.getLogger(__name__)

SEGMENTS = ("all", "sparse_users", "tail_items")
SEGMENT_LABELS = {
    "all": "all test users",
    "sparse_users": "users with the fewest past items",
    "tail_items": "truth on the least popular items",
}
# Preferred order only: a ranking metric is whatever the comparisons table pairs by user.
RANKING_ORDER = ("ndcg", "hr", "precision", "recall", "map", "mrr")
BEYOND_LABELS = {
    "coverage": "share of catalog recommended",
    "diversity": "mean 1 - cosine within a list",
    "novelty": "mean -log2 popularity (bits)",
}
GAP_METRICS = ("ndcg", "hr")  # the headline gaps; comparisons.csv holds every one
COLOURS = {
    "hybrid": "tab:red",
    "als": "tab:blue",
    "cooc": "tab:orange",
    "text": "tab:green",
    "popularity": "tab:gray",
    "ease": "tab:purple",
    "item_knn": "tab:brown",
}
# The re-rank curve: NDCG on the y axis against each of these on its own x axis.
CURVE_AXES = {
    "coverage": "catalog coverage",
    "diversity": "diversity (mean 1 - cosine within a list)",
    "tail_hr": "tail-item HR",
    "novelty": "novelty (bits)",
}
PANEL_WIDTH, PANEL_HEIGHT = 4.6, 4.0


def metrics_figure(
    metrics: pd.DataFrame, comparisons: pd.DataFrame, k: int, confidence: float
) -> Figure:
    """Top row: the ranking metrics per model in each segment, then the hybrid's NDCG gaps.
    Bottom row: each beyond-accuracy metric on its own axis, then the HR gaps. ``metrics`` and
    ``comparisons`` are the tables of the same names (one run, one K)."""
    ranking = in_order(comparisons["metric"], RANKING_ORDER)
    beyond = in_order(
        {m for m in metrics["metric"] if not m.startswith("reason_")} - set(ranking),
        tuple(BEYOND_LABELS),
    )
    segments = in_order(metrics.loc[metrics["metric"].isin(ranking), "segment"], SEGMENTS)
    columns = max(len(segments), len(beyond)) + 1
    fig, axes = plt.subplots(
        2, columns, figsize=(PANEL_WIDTH * columns, 2 * PANEL_HEIGHT), squeeze=False
    )
    users = comparisons.groupby("segment")["users"].max()
    for ax, segment in zip(axes[0], segments, strict=False):
        rows = metrics[(metrics["segment"] == segment) & metrics["metric"].isin(ranking)]
        _ranking_bars(ax, rows, ranking)
        _title(ax, f"ranking metrics@{k}, {segment}", segment, users.get(segment))
    axes[0, 0].legend(title="model", fontsize=8)
    for ax, metric in zip(axes[1], beyond, strict=False):
        _beyond_bars(ax, metrics[(metrics["metric"] == metric) & (metrics["segment"] == "all")])
        ax.set_title(f"{metric}@{k}, all test users")
        ax.set_ylabel(BEYOND_LABELS.get(metric, metric))
    for ax, metric in zip(axes[:, -1], [m for m in GAP_METRICS if m in ranking], strict=False):
        _gap_bars(ax, comparisons[comparisons["metric"] == metric], metric, k, confidence)
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_visible(False)
    fig.suptitle(
        f"hybridrec evaluation: top-{k} lists on the test split (hybrid outlined in black)",
        fontsize=13,
    )
    fig.tight_layout()
    return fig


def debias_curve_figure(curve: pd.DataFrame, k: int) -> Figure:
    """NDCG against coverage, diversity, tail HR and novelty, one point per de-biasing strength
    (labelled), the served one ringed. ``curve``: one row per strength, a column per metric."""
    axes_metrics = [m for m in CURVE_AXES if m in curve.columns]
    fig, axes = plt.subplots(
        1, len(axes_metrics), figsize=(PANEL_WIDTH * len(axes_metrics), PANEL_HEIGHT), squeeze=False
    )
    for ax, metric in zip(axes[0], axes_metrics, strict=True):
        ax.plot(curve[metric], curve["ndcg"], marker="o", color=COLOURS["hybrid"])
        for row in curve.itertuples():
            ax.annotate(f"{row.debias:g}", (getattr(row, metric), row.ndcg), fontsize=7)
        served = curve[curve["served"]]
        ax.scatter(served[metric], served["ndcg"], s=160, facecolors="none", edgecolors="black")
        ax.set_xlabel(CURVE_AXES[metric])
        ax.set_ylabel(f"NDCG@{k}")
    fig.suptitle(
        f"hybrid re-rank curve on test: popularity de-biasing strength at each point "
        f"(ringed: picked on validation), top-{k}",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def in_order(values: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    """The distinct ``values``, those in ``preferred`` first in its order, then the rest sorted."""
    present = set(values)
    return [v for v in preferred if v in present] + sorted(present - set(preferred))


def _models(present: Iterable[str]) -> list[str]:
    return in_order(present, MODELS)


def _outline(model: str) -> dict:
    return {"edgecolor": "black", "linewidth": 1.5} if model == HYBRID else {}


def _title(ax: Axes, title: str, segment: str, users: float | None) -> None:
    detail = SEGMENT_LABELS.get(segment, segment)
    if users is not None and not pd.isna(users):
        detail += f", {int(users):,} users"
    ax.set_title(f"{title}\n({detail})", fontsize=10)


def _ranking_bars(ax: Axes, rows: pd.DataFrame, ranking: list[str]) -> None:
    wide = rows.pivot(index="metric", columns="model", values="value").reindex(ranking)
    models = _models(wide.columns)
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        offset = (i - (len(models) - 1) / 2) * width
        ax.bar(
            [j + offset for j in range(len(ranking))],
            wide[model],
            width,
            label=model,
            color=COLOURS.get(model),
            **_outline(model),
        )
    ax.set_xticks(range(len(ranking)), ranking)
    ax.set_ylabel("mean over the segment's users (0-1)")


def _beyond_bars(ax: Axes, rows: pd.DataFrame) -> None:
    values = rows.set_index("model")["value"]
    models = _models(values.index)
    for model in models:
        ax.bar(model, values[model], color=COLOURS.get(model), **_outline(model))
    ax.tick_params(axis="x", labelrotation=30)


def _gap_bars(ax: Axes, gaps: pd.DataFrame, metric: str, k: int, confidence: float) -> None:
    """Hybrid minus each baseline per segment; the error bar is the paired interval."""
    baselines = [m for m in _models(gaps["model"]) if m != HYBRID]
    segments = in_order(gaps["segment"], SEGMENTS)
    width = 0.8 / max(len(baselines), 1)
    for i, model in enumerate(baselines):
        rows = gaps[gaps["model"] == model].set_index("segment").reindex(segments)
        offset = (i - (len(baselines) - 1) / 2) * width
        ax.bar(
            [j + offset for j in range(len(segments))],
            rows["difference"],
            width,
            yerr=[rows["difference"] - rows["ci_low"], rows["ci_high"] - rows["difference"]],
            capsize=3,
            label=f"vs {model}",
            color=COLOURS.get(model),
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(segments)), segments)
    ax.set_title(
        f"hybrid minus baseline, {metric}@{k}\n"
        f"(paired by user, {100 * confidence:.0f}% interval; above 0: hybrid better)",
        fontsize=10,
    )
    ax.set_ylabel(f"difference in {metric}")
    ax.legend(fontsize=8)


def close(fig: Figure) -> None:
    plt.close(fig)


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_report(warehouse: Warehouse, run_id: str, name: str, data: bytes) -> str:
    """Write ``data`` as ``_reports/run_id=<run>/<name>`` beside the tables, on whatever Hadoop
    file system holds them, and return its path. It goes to a temporary name first and is then
    renamed, so a reader never sees half a file; a retry replaces it."""
    folder = warehouse.report_path(run_id)
    target = f"{folder}/{name}"
    jvm = warehouse.spark.sparkContext._jvm
    fs = jvm.org.apache.hadoop.fs.Path(folder).getFileSystem(
        warehouse.spark.sparkContext._jsc.hadoopConfiguration()
    )
    temporary = jvm.org.apache.hadoop.fs.Path(f"{folder}/.{name}.{secrets.token_hex(4)}")
    destination = jvm.org.apache.hadoop.fs.Path(target)
    try:
        stream = fs.create(temporary, True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()
        # Hadoop's rename does not replace an existing file.
        fs.delete(destination, False)
        if not fs.rename(temporary, destination):
            raise OSError(f"could not move {temporary} to {target}")
    except BaseException:
        fs.delete(temporary, False)
        raise
    log.info("wrote plot %s", target)
    return target
