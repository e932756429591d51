"""Scoring a catalog too large to broadcast: candidate generation and ranking at 1M items.

    python benchmarks/large_catalog.py [--items 1000000] [--users 20000] [--dim 384]
        [--work /tmp/hybridrec-large] [--set score.candidates.als=200 ...]

Generates, in Spark, a catalog of ``--items`` items in latent topics with Zipf popularity, users
who mostly stay in one topic (about 12 events each, the newest held out for test and the one
before for validation), ALS-like factors and text vectors (topic centre plus noise, the dims of
the real models) and co-occurrence and text neighbour lists (100 per item, within the topic).
Then it runs what the score job runs above ``score.candidates.max_full_items``: candidate
generation, tuning over candidates on validation (with the candidate recall) and the test
fold's top-K, written to Spark's ``noop`` sink so that nothing is skipped.

Printed: seconds per step, candidates per user, candidate recall and NDCG@K on validation of the
picked weights, and the broadcasts made from Python (the full-ranking path broadcasts the whole
catalog; this one must make none).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark import SparkContext
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hybridrec.config.loader import load_config
from hybridrec.constants import SPLIT_COL, TEST, TS_COL, VALIDATION
from hybridrec.ops.runner import setup_logging
from hybridrec.ops.session import get_spark
from hybridrec.ranking import candidates, scoring
from udfs.ranking_kernel import weight_grid

REPO = Path(__file__).resolve().parents[1]
TOPICS, RANK, NEIGHBOURS, EVENTS = 2000, 32, 100, 12


def _rng(partition_seed: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, partition_seed])


def _centres(dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((TOPICS, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _item_rows(ids: np.ndarray, n_items: int, dim: int, seed: int) -> pd.DataFrame:
    """Item i is in topic i % TOPICS, at popularity rank i // TOPICS within it."""
    rng = _rng(int(ids[0]) if len(ids) else 0, seed)
    topic = ids % TOPICS
    cf = _centres(RANK, seed)[topic] + 0.6 * rng.standard_normal((len(ids), RANK))
    # Popular items (low rank in their topic) get longer factors, as ALS gives them.
    cf *= (1.5 - 0.5 * np.log1p(ids // TOPICS) / np.log1p(n_items // TOPICS))[:, None]
    text = _centres(dim, seed + 1)[topic] + 0.8 * rng.standard_normal((len(ids), dim)) / np.sqrt(
        dim
    )
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return pd.DataFrame(
        {
            "item_id": np.char.add("i", ids.astype(str)),
            "factors": list(cf.astype(np.float32)),
            "embedding": list(text.astype(np.float32)),
        }
    )


def _neighbour_rows(ids: np.ndarray, n_items: int, seed: int, kind: int) -> pd.DataFrame:
    """Each item's neighbours: items of its topic near it in popularity, similarity falling."""
    rng = _rng(int(ids[0]) + kind if len(ids) else kind, seed)
    per_topic = n_items // TOPICS
    topic, position = ids % TOPICS, ids // TOPICS
    offsets = rng.integers(1, max(2, per_topic // 4), size=(len(ids), NEIGHBOURS))
    neighbour = topic[:, None] + TOPICS * ((position[:, None] + offsets) % per_topic)
    sims = np.sort(rng.uniform(0.2, 0.95, size=(len(ids), NEIGHBOURS)), axis=1)[:, ::-1]
    return pd.DataFrame(
        {
            "item_id": np.repeat(np.char.add("i", ids.astype(str)), NEIGHBOURS),
            "neighbour_id": np.char.add("i", neighbour.ravel().astype(str)),
            "similarity": sims.ravel().astype(np.float32),
        }
    )


def _user_rows(ids: np.ndarray, n_items: int, dim: int, seed: int) -> pd.DataFrame:
    """Per user: a topic, EVENTS items of it (Zipf over popularity rank, a few from other
    topics), newest last, and factors and a text vector near the topic centre."""
    rng = _rng(int(ids[0]) if len(ids) else 0, seed + 7)
    per_topic = n_items // TOPICS
    topic = rng.integers(0, TOPICS, len(ids))
    ranks = np.minimum(rng.zipf(1.3, (len(ids), EVENTS)) - 1, per_topic - 1)
    stray = rng.random((len(ids), EVENTS)) < 0.15
    topics = np.where(stray, rng.integers(0, TOPICS, (len(ids), EVENTS)), topic[:, None])
    items = topics + TOPICS * ranks
    user_ids = np.char.add("u", ids.astype(str))
    cf = _centres(RANK, seed)[topic] + 0.6 * rng.standard_normal((len(ids), RANK))
    text = _centres(dim, seed + 1)[topic] + rng.standard_normal((len(ids), dim)) / np.sqrt(dim)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    split = np.array(["train"] * (EVENTS - 2) + ["validation", "test"])
    return pd.DataFrame(
        {
            "user_id": np.repeat(user_ids, EVENTS),
            "item_id": np.char.add("i", items.ravel().astype(str)),
            "event_ts": np.tile(np.arange(EVENTS), len(ids)) * 86_400 + 1_500_000_000,
            SPLIT_COL: np.tile(split, len(ids)),
            "user_factors": [v for v in cf.astype(np.float32) for _ in range(EVENTS)],
            "user_embedding": [v for v in text.astype(np.float32) for _ in range(EVENTS)],
        }
    )


def generate(spark: SparkSession, work: Path, n_items: int, n_users: int, dim: int, seed: int):
    """Parquet tables under ``work`` (made once per size; reused if present)."""
    folder = work / f"items{n_items}-users{n_users}-dim{dim}-seed{seed}"
    if (folder / "_done").exists():
        return folder
    parts = max(8, n_items // 50_000)

    def write(name: str, fn, schema: str, rows: int, partitions: int) -> None:
        def run(batches):
            for batch in batches:
                yield fn(batch["id"].to_numpy())

        spark.range(rows, numPartitions=partitions).mapInPandas(run, schema).write.mode(
            "overwrite"
        ).parquet(str(folder / name))

    neighbour_schema = "item_id string, neighbour_id string, similarity float"
    write(
        "items",
        lambda i: _item_rows(i, n_items, dim, seed),
        "item_id string, factors array<float>, embedding array<float>",
        n_items,
        parts,
    )
    for kind, name in ((1, "item_neighbours"), (2, "text_neighbours")):
        write(
            name,
            lambda i, k=kind: _neighbour_rows(i, n_items, seed, k),
            neighbour_schema,
            n_items,
            parts,
        )
    write(
        "interactions",
        lambda i: _user_rows(i, n_items, dim, seed),
        f"user_id string, item_id string, event_ts long, {SPLIT_COL} string, "
        "user_factors array<float>, user_embedding array<float>",
        n_users,
        max(4, n_users // 5_000),
    )
    (folder / "_done").touch()
    return folder


def fold_tables(spark: SparkSession, folder: Path, cfg) -> candidates.FoldTables:
    """The generated tables as the candidate path reads one fold (both folds share them)."""
    read = lambda name: spark.read.parquet(str(folder / name))  # noqa: E731
    events = read("interactions").withColumn(TS_COL, F.col("event_ts").cast("timestamp"))
    items = read("items")
    users = events.select("user_id", "user_factors", "user_embedding").dropDuplicates(["user_id"])
    interactions = events.drop("user_factors", "user_embedding")
    return candidates.FoldTables(
        interactions=interactions,
        items=items.select("item_id"),
        item_factors=items.select("item_id", "factors"),
        item_vectors=items.select("item_id", "embedding"),
        user_factors=users.select("user_id", F.col("user_factors").alias("factors")),
        user_vectors=users.select("user_id", F.col("user_embedding").alias("embedding")),
        neighbours=read("item_neighbours"),
        text_neighbours=read("text_neighbours"),
        popularity=scoring.popularity(interactions, TEST),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--grid-step", type=float, default=0.25)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hybridrec-large"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config([REPO / "conf/local.yaml"], [f"run.work_dir={args.work / 'run'}", *args.set])
    spark = get_spark(cfg)
    broadcasts: list[int] = []
    original = SparkContext.broadcast

    def counting(self, value):
        broadcasts.append(1)
        return original(self, value)

    SparkContext.broadcast = counting
    steps: dict[str, float] = {}

    def timed(name: str, fn):
        started = time.perf_counter()
        result = fn()
        steps[name] = time.perf_counter() - started
        print(f"{name}: {steps[name]:.1f}s", flush=True)
        return result

    folder = timed(
        "generate", lambda: generate(spark, args.work, args.items, args.users, args.dim, args.seed)
    )
    tables = fold_tables(spark, folder, cfg)
    n_items = tables.items.count()
    if not candidates.use_candidates(cfg, n_items):
        raise SystemExit(
            f"{n_items} items is within score.candidates.max_full_items "
            f"({cfg.score.candidates.max_full_items}): full ranking would be used"
        )
    grid = weight_grid(args.grid_step)
    sharpness = cfg.score.recent_sharpness

    def tune() -> pd.DataFrame:
        ranks = candidates.tune_ranks(
            tables, VALIDATION, grid, cfg, scoring.TUNE_SCHEMA, recent_sharpness=sharpness
        )
        return candidates.summarise(ranks, cfg.score.k).toPandas()

    summary = timed("tune on validation (candidates + grid)", tune)
    best = summary.sort_values(["ndcg", "combo"], ascending=[False, True]).iloc[0]
    weights = grid[int(best["combo"])]

    def serve() -> None:
        recs = candidates.recommend(
            tables,
            TEST,
            {"hybrid": weights},
            cfg,
            scoring.RECOMMENDATION_SCHEMA,
            recent_sharpness=sharpness,
        )
        recs.write.format("noop").mode("overwrite").save()

    timed("recommend for test (candidates + top-K)", serve)
    per_user = timed("candidates per user (count)", lambda: _per_user(tables, cfg))
    SparkContext.broadcast = original
    print()
    print(
        pd.Series(
            {
                "items": n_items,
                "users": args.users,
                "text dim": args.dim,
                "candidates per user (mean)": round(per_user, 1),
                "validation users": int(best["users"]),
                "candidate recall on validation": round(float(best["candidate_recall"]), 4),
                f"validation ndcg@{cfg.score.k} (picked weights)": round(float(best["ndcg"]), 4),
                "picked weights": " ".join(f"{p}={w:g}" for p, w in weights.items()),
                "broadcasts from Python": len(broadcasts),
                **{f"{k} s": round(v, 1) for k, v in steps.items()},
            }
        ).to_string()
    )
    return 0


def _per_user(tables: candidates.FoldTables, cfg) -> float:
    users = candidates.users_to_rank(tables, TEST)
    pairs = candidates.candidate_pairs(tables, cfg, TEST, users, cfg.score.recent_sharpness)
    row = pairs.groupBy("user_id").count().agg(F.avg("count")).first()
    return float(row[0]) if row[0] is not None else math.nan


if __name__ == "__main__":
    sys.exit(main())
