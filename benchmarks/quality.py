"""Quality benchmark: the whole pipeline on each data set folder given, one table at the end.

    python benchmarks/quality.py /data/amazon_magazine_subscriptions_5_2018 \
        /data/amazon_all_beauty_5_2018 /data/movielens_ml-latest-small \
        [--work /tmp/hybridrec-quality] [--set key=value ...]

A folder with ``ratings.csv(.gz)`` is read as MovieLens; one with ``*_5.json(.gz)`` (and an
optional ``meta_*.json(.gz)``) as Amazon reviews. Every choice (ALS grid point, fusion weights)
is made on validation; the table reports the test split. Each data set gets its own warehouse
and MLflow store under ``--work``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from hybridrec.config.loader import load_config
from hybridrec.constants import (
    COMPARISONS,
    DEBIAS_CURVE,
    FUSION_WEIGHTS,
    HYBRID_LINEAR,
    LEARNED_RANKER,
    METRICS,
)
from hybridrec.ops.runner import new_run_id, setup_logging
from hybridrec.ops.session import get_spark
from hybridrec.store.tables import Warehouse
from pipelines.end_to_end import run_pipeline
from udfs.ranking_kernel import PARTS

REPO = Path(__file__).resolve().parents[1]


def source_settings(folder: Path) -> tuple[str, list[str]]:
    """The conf file and overrides that read ``folder``."""
    if any(folder.glob("ratings.csv*")):
        return "conf/movielens.yaml", [f"source.movielens.path={folder}"]
    reviews = sorted(p for p in folder.glob("*.json*") if not p.name.startswith("meta_"))
    if not reviews:
        raise SystemExit(f"{folder}: neither ratings.csv nor Amazon *.json(.gz) review files")
    overrides = [f"source.amazon.reviews_path={reviews[0]}"]
    meta = sorted(folder.glob("meta_*.json*"))
    if meta:
        overrides.append(f"source.amazon.meta_path={meta[0]}")
    return "conf/amazon.yaml", overrides


def measured_runs(folders: list[Path], work: Path, sets: list[str]):
    """For the diagnostics run after this benchmark: per data set folder, its config (as this
    benchmark loaded it), the session and the warehouse of its newest run with fusion weights."""
    spark = None
    for folder in folders:
        conf, overrides = source_settings(folder.resolve())
        cfg = load_config(
            [REPO / "conf/local.yaml", REPO / conf],
            [f"run.work_dir={work / folder.name}", *overrides, *sets],
        )
        spark = spark or get_spark(cfg)
        runs = Warehouse.from_config(spark, cfg).runs(FUSION_WEIGHTS)
        if not runs:
            raise SystemExit(f"{folder.name}: no fusion weights under {work}: run quality.py")
        yield folder, cfg, spark, Warehouse.from_config(spark, cfg, max(runs))


def summary(table: pd.DataFrame, compared: pd.DataFrame) -> pd.DataFrame:
    """Per data set: the hybrid against the best single-signal baseline (ALS, text, popularity),
    against the best of the strongest simple recommenders (EASE, item-kNN), against every
    baseline, and its sparse-user HR, coverage and tail HR against ALS's; the gaps with their
    paired 95% intervals and p-values, so a win can be told from noise."""
    by_model = table.pivot_table(
        index="data set",
        columns="model",
        values=["ndcg@10", "sparse hr@10", "coverage", "tail hr@10"],
    )
    ndcg, sparse = by_model["ndcg@10"], by_model["sparse hr@10"]
    gaps = compared.set_index(["data set", "segment", "model", "metric"])

    def gap(data_set: str, segment: str, model: str, metric: str) -> str:
        r = gaps.loc[(data_set, segment, model, metric)]
        return f"{r.difference:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}] p={r.p_value:.3f}"

    columns = {"hybrid ndcg@10": ndcg["hybrid"]}
    for label, models in (
        ("als/text/pop", ("als", "text", "popularity")),
        ("ease/item_knn", ("ease", "item_knn")),
        ("every baseline", tuple(m for m in ndcg if m not in ("hybrid", HYBRID_LINEAR))),
    ):
        group = ndcg[[m for m in models if m in ndcg]]
        if group.empty:
            continue
        best = group.max(axis=1)
        columns[f"best of {label}"] = best
        columns[f"hybrid / best of {label}"] = ndcg["hybrid"] / best
        columns[f"gap to best of {label}"] = [
            gap(d, "all", group.loc[d].idxmax(), "ndcg") for d in ndcg.index
        ]
    columns |= {
        "sparse hr hybrid": sparse["hybrid"],
        "sparse hr als": sparse["als"],
        "sparse hr gap": [gap(d, "sparse_users", "als", "hr") for d in ndcg.index],
        "coverage hybrid / als": by_model["coverage"]["hybrid"] / by_model["coverage"]["als"],
        "tail hr hybrid": by_model["tail hr@10"]["hybrid"],
        "tail hr als": by_model["tail hr@10"]["als"],
    }
    if HYBRID_LINEAR in ndcg:
        columns |= {
            "hybrid / hybrid_linear": ndcg["hybrid"] / ndcg[HYBRID_LINEAR],
            "gap to hybrid_linear": [
                gap(d, "all", HYBRID_LINEAR, "ndcg") if pd.notna(ndcg.loc[d, HYBRID_LINEAR]) else ""
                for d in ndcg.index
            ],
        }
    return pd.DataFrame(columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hybridrec-quality"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging()
    rows, comparisons, curves, picks, rankers = [], [], [], [], []
    spark = None
    for folder in args.folders:
        conf, overrides = source_settings(folder.resolve())
        work = args.work / folder.name
        cfg = load_config(
            [REPO / "conf/local.yaml", REPO / conf],
            [f"run.work_dir={work}", *overrides, *args.set],
        )
        spark = spark or get_spark(cfg)
        run_id = new_run_id()
        started = time.perf_counter()
        results = run_pipeline(spark, cfg, run_id)
        seconds = time.perf_counter() - started
        warehouse = Warehouse.from_config(spark, cfg, run_id)
        metrics = warehouse.read(METRICS).toPandas()
        comparisons.append(
            warehouse.read(COMPARISONS).toPandas().assign(**{"data set": folder.name})
        )
        picked = warehouse.read(FUSION_WEIGHTS).where("model = 'hybrid'").toPandas()
        picks.append(picked.assign(**{"data set": folder.name}))
        if warehouse.exists(LEARNED_RANKER):
            ranker = warehouse.read(LEARNED_RANKER).drop("model", "features", "note").toPandas()
            rankers.append(ranker.assign(**{"data set": folder.name}))
        curve = warehouse.read(DEBIAS_CURVE).toPandas()
        if len(curve):
            curves.append(
                curve.pivot_table(index=["debias", "served"], columns="metric", values="value")
                .reset_index()
                .assign(**{"data set": folder.name})
            )
        wide = metrics.pivot_table(index="model", columns=["segment", "metric"], values="value")
        ingest = results["ingest"]
        for model, values in wide.iterrows():
            rows.append(
                {
                    "data set": folder.name,
                    "model": model,
                    "ndcg@10": values[("all", "ndcg")],
                    "hr@10": values[("all", "hr")],
                    "coverage": values[("all", "coverage")],
                    "diversity": values.get(("all", "diversity"), float("nan")),
                    "sparse hr@10": values[("sparse_users", "hr")],
                    "tail hr@10": values[("tail_items", "hr")],
                    "popular reasons": values.get(("all", "reason_pop"), float("nan")),
                    "rows in": ingest.get("behaviour_in", 0) + ingest.get("reviews_in", 0),
                    "rejected": ingest["rejects"] - ingest.get("items_rejected", 0),
                    "seconds": seconds,
                }
            )
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print("\nNDCG@10, HR@10 and coverage on the test split (choices made on validation)\n")
    print(table.round(4).to_string(index=False))
    print()
    print("Gaps: hybrid minus the baseline, paired by user, 95% interval and p-value\n")
    print(summary(table, pd.concat(comparisons)).round(4).T.to_string())
    print("\nThe hybrid's weights, picked on validation\n")
    columns = ["data set", *PARTS, "recent_sharpness", "debias", "validation_ndcg"]
    print(pd.concat(picks)[columns].round(4).to_string(index=False))
    if rankers:
        print("\nThe learned ranker, judged on validation (forward: trained on the early fold)\n")
        print(pd.concat(rankers).round(4).to_string(index=False))
    if curves:
        print("\nRe-rank curve on test: the hybrid at each popularity de-biasing strength")
        print("(served: the strength picked on validation within score.max_ndcg_loss)\n")
        columns = ["data set", "debias", "served", "ndcg", "hr", "coverage", "diversity"]
        columns += ["novelty", "tail_hr", "sparse_hr"]
        every = pd.concat(curves)
        print(every[[c for c in columns if c in every]].round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
