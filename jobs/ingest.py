"""ingest: raw behaviour, reviews and items -> interactions (with split), items, rejects.

spark-submit jobs/ingest.py --conf conf/local.yaml [--set source.kind=amazon ...] [--run-id R]
python -m jobs.ingest --conf conf/local.yaml
"""

from __future__ import annotations

import logging
import sys
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybridrec import ingest
from hybridrec.config import Config
from hybridrec.constants import INTERACTIONS, ITEMS, REJECTS, SPLIT_COL
from hybridrec.runner import job_main
from hybridrec.sources import read_raw
from hybridrec.tables import Warehouse

NAME = "ingest"
log = logging.getLogger(__name__)


class RowAccountingError(RuntimeError):
    """Input rows did not all end in interactions or rejects."""


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    warehouse = Warehouse.from_config(spark, cfg)
    raw = read_raw(spark, cfg)
    counts: dict[str, float] = {}
    validated: dict[str, DataFrame | None] = {"behaviour": None, "reviews": None, "items": None}
    rejects: list[DataFrame] = []
    validators = {
        "behaviour": lambda df: ingest.validate_behaviour(df, cfg, run_id),
        "reviews": lambda df: ingest.validate_reviews(df, cfg, run_id),
        "items": lambda df: ingest.validate_items(df, run_id),
    }
    for kind, validate in validators.items():
        table = getattr(raw, kind)
        if table is None:
            continue
        # Counted here and validated below: cached so the source is read once.
        table = table.cache()
        counts[f"{kind}_in"] = table.count()
        checked = validate(table)
        validated[kind] = checked.valid
        rejects.append(checked.rejects)
    behaviour, reviews, items = validated["behaviour"], validated["reviews"], validated["items"]

    interactions = ingest.leave_last_out_split(ingest.join_interactions(behaviour, reviews))
    counts["interactions"] = warehouse.write(interactions, INTERACTIONS)
    interactions = warehouse.read(INTERACTIONS)
    counts["items"] = warehouse.write(ingest.build_items(items, interactions), ITEMS)
    all_rejects = reduce(DataFrame.unionByName, rejects).cache()
    warehouse.write(all_rejects, REJECTS, partition_by=["run_id"])
    counts["rejects"] = all_rejects.count()
    counts.update(_check_accounting(all_rejects, interactions, counts))
    for split, n in interactions.groupBy(SPLIT_COL).count().collect():
        counts[f"{split}_rows"] = n
    return counts


def _check_accounting(
    rejects: DataFrame, interactions: DataFrame, counts: dict[str, float]
) -> dict[str, float]:
    """Prove that every input row is in interactions (as written), in this run's rejects, or
    attached as a review."""
    by_origin = dict(interactions.groupBy("origin").count().collect())
    # ``source`` names the raw table first: ``reviews:amazon:<path>``.
    by_table = dict(rejects.groupBy(F.split("source", ":").getItem(0)).count().collect())
    rejected = {kind: by_table.get(kind, 0) for kind in ("behaviour", "reviews", "items")}
    attached = by_origin.get(ingest.ORIGIN_BEHAVIOUR_REVIEW, 0)
    expected = {
        "behaviour": (
            counts.get("behaviour_in", 0),
            by_origin.get(ingest.ORIGIN_BEHAVIOUR, 0) + attached,
        ),
        "reviews": (counts.get("reviews_in", 0), by_origin.get(ingest.ORIGIN_REVIEW, 0) + attached),
    }
    for kind, (rows_in, kept) in expected.items():
        if rows_in != kept + rejected[kind]:
            raise RowAccountingError(
                f"{kind}: {rows_in} rows in, but {kept} kept + {rejected[kind]} rejected"
            )
    log.info(
        "row accounting ok: behaviour %d = %d kept + %d rejected; reviews %d = %d kept + %d "
        "rejected (%d attached to behaviour rows)",
        expected["behaviour"][0],
        expected["behaviour"][1],
        rejected["behaviour"],
        expected["reviews"][0],
        expected["reviews"][1],
        rejected["reviews"],
        attached,
    )
    return {
        "behaviour_rejected": rejected["behaviour"],
        "reviews_rejected": rejected["reviews"],
        "items_rejected": rejected["items"],
        "reviews_attached": attached,
    }


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
