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

import matplotlib

matplotlib.use("Agg")  # batch job: no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hybridrec.constants import HYBRID, MODELS  # noqa: E402
from hybridrec.tables import Warehouse  # noqa: E402

log = logging.getLogger(__name__)

SEGMENTS = ("all", "sparse_users", "tail_items")
RANKING = ("ndcg", "hr")
BEYOND = ("coverage", "diversity", "novelty")
BEYOND_LABELS = {
    "coverage": "share of catalog recommended",
    "diversity": "mean 1 - cosine within a list",
    "novelty": "mean -log2 popularity (bits)",
}
COLOURS = {"hybrid": "tab:red", "als": "tab:blue", "cooc": "tab:orange", "text": "tab:green"}
COLOURS["popularity"] = "tab:gray"


def metrics_figure(metrics: pd.DataFrame, comparisons: pd.DataFrame, k: int) -> Figure:
    """Top row: NDCG and HR per model in each segment, then the hybrid's NDCG gaps with their
    intervals. Bottom row: coverage, diversity and novelty, each on its own axis, then the HR
    gaps. ``metrics``: model, metric, value, segment; ``comparisons``: model, metric,
    difference, ci_low, ci_high, segment (the table's columns)."""
    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax, segment in zip(axes[0, :3], SEGMENTS, strict=True):
        _ranking_bars(ax, metrics[metrics["segment"] == segment], segment, k)
    for ax, metric in zip(axes[1, :3], BEYOND, strict=True):
        _beyond_bars(ax, metrics[(metrics["segment"] == "all") & (metrics["metric"] == metric)])
        ax.set_title(f"{metric}@{k} (all users)")
        ax.set_ylabel(BEYOND_LABELS[metric])
    for ax, metric in ((axes[0, 3], "ndcg"), (axes[1, 3], "hr")):
        _gap_bars(ax, comparisons[comparisons["metric"] == metric], metric, k)
    fig.suptitle(f"hybridrec: models at K={k} on the test split", fontsize=13)
    fig.tight_layout()
    return fig


def _ordered(models) -> list[str]:
    return [m for m in MODELS if m in set(models)]


def _ranking_bars(ax, metrics: pd.DataFrame, segment: str, k: int) -> None:
    wide = metrics[metrics["metric"].isin(RANKING)].pivot(
        index="metric", columns="model", values="value"
    )
    models = _ordered(wide.columns)
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        positions = [j + (i - (len(models) - 1) / 2) * width for j in range(len(wide.index))]
        ax.bar(
            positions,
            wide[model],
            width,
            label=model,
            color=COLOURS.get(model),
            edgecolor="black" if model == HYBRID else None,
        )
    ax.set_xticks(range(len(wide.index)), [f"{m}@{k}" for m in wide.index])
    ax.set_title(f"{segment}")
    ax.set_ylabel("mean over test users (0-1)")
    if segment == SEGMENTS[0]:
        ax.legend(title="model", fontsize=8)


def _beyond_bars(ax, metric_rows: pd.DataFrame) -> None:
    values = metric_rows.set_index("model")["value"]
    models = _ordered(values.index)
    ax.bar(models, [values[m] for m in models], color=[COLOURS.get(m) for m in models])
    ax.tick_params(axis="x", labelrotation=30)


def _gap_bars(ax, gaps: pd.DataFrame, metric: str, k: int) -> None:
    """Hybrid minus each baseline per segment, the 95% paired interval as the error bar."""
    baselines = [m for m in _ordered(gaps["model"]) if m != HYBRID]
    segments = [s for s in SEGMENTS if s in set(gaps["segment"])]
    width = 0.8 / max(len(baselines), 1)
    for i, model in enumerate(baselines):
        rows = gaps[gaps["model"] == model].set_index("segment").reindex(segments)
        positions = [j + (i - (len(baselines) - 1) / 2) * width for j in range(len(segments))]
        errors = [rows["difference"] - rows["ci_low"], rows["ci_high"] - rows["difference"]]
        ax.bar(
            positions,
            rows["difference"],
            width,
            yerr=errors,
            capsize=3,
            label=f"vs {model}",
            color=COLOURS.get(model),
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(segments)), segments)
    ax.set_title(f"hybrid minus baseline, {metric}@{k}")
    ax.set_ylabel(f"difference in {metric} (95% paired interval)")
    ax.legend(fontsize=8)


def close(fig: Figure) -> None:
    plt.close(fig)


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_report(warehouse: Warehouse, run_id: str, name: str, data: bytes) -> str:
    """Write ``data`` as ``_reports/run_id=<run>/<name>`` beside the tables (any Hadoop file
    system), through a temporary name so a reader never sees half a file; a retry replaces it."""
    folder = warehouse.report_path(run_id)
    target = f"{folder}/{name}"
    temporary = f"{folder}/.{name}.{secrets.token_hex(4)}"
    jvm = warehouse.spark.sparkContext._jvm
    conf = warehouse.spark.sparkContext._jsc.hadoopConfiguration()
    fs = jvm.org.apache.hadoop.fs.Path(folder).getFileSystem(conf)
    stream = fs.create(jvm.org.apache.hadoop.fs.Path(temporary), True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()
    destination = jvm.org.apache.hadoop.fs.Path(target)
    fs.delete(destination, False)
    if not fs.rename(jvm.org.apache.hadoop.fs.Path(temporary), destination):
        raise OSError(f"could not move {temporary} to {target}")
    log.info("wrote plot %s", target)
    return target
