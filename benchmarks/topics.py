"""Topics and interests benchmark: on the warehouses ``quality.py`` left, fit the topics job
again and measure what the README reports.

    python benchmarks/quality.py /data/amazon_magazine_subscriptions_5_2018 ... --work W
    python benchmarks/topics.py /data/amazon_magazine_subscriptions_5_2018 ... --work W \
        [--set topics.k=16 ...]

Per data set: the k picked (silhouette per k), coherence (mean NPMI of each topic's top words
over the texts) next to random sets of the same words, the five largest topics as a reader sees
them, how often the next item (test split) falls in a user's three interest tags against the
three most popular topics (paired per user, 95% interval), users with a shift, and how VADER's
polarity agrees with the stars on rated reviews.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from hybridrec.constants import (
    INTERACTIONS,
    ITEM_EMBEDDINGS,
    TOPICS,
    USER_INTERESTS,
    VALIDATION,
)
from hybridrec.models import interests, topics
from hybridrec.models.folds import history
from hybridrec.ops import tracking
from hybridrec.ops.runner import setup_logging
from jobs import evaluate
from jobs import topics as topics_job

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import measured_runs  # noqa: E402


def validation_hits(warehouse, cfg) -> interests.Hits:
    """The next-item check on the validation split, with nothing fitted on it: topics of the
    validation fold's item vectors, weighted by its history, and users' interests from that
    history; what a topics setting is chosen on, before test is looked at."""
    interactions = warehouse.read(INTERACTIONS)
    seen = history(interactions, VALIDATION)
    vectors = topics.weighted(
        topics.served_item_vectors(warehouse.read(ITEM_EMBEDDINGS), VALIDATION), seen, cfg
    ).cache()
    fitted = topics.fit(vectors, cfg)
    assigned = topics.item_topics(vectors, fitted).cache()
    named = {t: f"topic {t}" for t in range(fitted.k)}  # the check needs ids, not labels
    tags = interests.user_interests(seen, assigned, named, cfg)
    hits = interests.next_item_hits(
        interactions, assigned, tags, cfg.evaluate.confidence, fold=VALIDATION
    )
    vectors.unpersist()
    assigned.unpersist()
    return hits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hybridrec-quality"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging()
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 80)
    rows, shown = [], []
    for folder, cfg, spark, warehouse in measured_runs(args.folders, args.work, args.set):
        run_id = warehouse.run_id
        started = time.perf_counter()
        with tracking.job_run(cfg, run_id, "topics"):
            results = topics_job.run(spark, cfg, run_id)
        seconds = time.perf_counter() - started
        with tracking.job_run(cfg, run_id, "evaluate"):
            checks = evaluate.interest_checks(warehouse, cfg, warehouse.read(INTERACTIONS))
        validation = validation_hits(warehouse, cfg)
        table = warehouse.read(TOPICS).toPandas().sort_values("items", ascending=False)
        interests = warehouse.read(USER_INTERESTS)
        users = interests.count()
        shifted = interests.where("shift IS NOT NULL").count()
        rows.append(
            {
                "data set": folder.name,
                "k": int(results["topics"]),
                "silhouette": results.get(f"silhouette_k{int(results['topics'])}"),
                "npmi": results.get("coherence_npmi"),
                "npmi random": results.get("coherence_npmi_random"),
                "topics above random": float(
                    (table["npmi"] > results.get("coherence_npmi_random", 1.0)).mean()
                ),
                "validation: in tags": validation.interests,
                "in popular": validation.prior,
                "low": validation.low,
                "high": validation.high,
                "next in tags": checks.get("interests.next_item_hit"),
                "next in popular": checks.get("interests.popular_topics_hit"),
                "gain low": checks.get("interests.gain_low"),
                "gain high": checks.get("interests.gain_high"),
                "users": users,
                "with shift": shifted,
                "sentiment agree": results.get("sentiment_polar_agreement"),
                "sentiment rho": results.get("sentiment_spearman"),
                "seconds": seconds,
            }
        )
        shown.append(
            table.head(5)[["topic_id", "items", "label", "npmi"]].assign(
                **{"data set": folder.name}
            )
        )
    print("\nTopics and interests (served fold; next item: the test split)\n")
    print(pd.DataFrame(rows).round(4).to_string(index=False))
    print("\nThe five largest topics per data set, as named by their words\n")
    print(pd.concat(shown).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
