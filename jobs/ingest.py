"""ingest: raw behaviour, reviews and items -> interactions (with split), items, rejects.

spark-submit jobs/ingest.py --conf conf/local.yaml [--set source.kind=amazon ...] [--run-id R]
python -m jobs.ingest --conf conf/local.yaml

Every table is written as this run's snapshot (``run_id``) and read back from it, so the row
accounting counts this run's rows only. An input with no valid row fails before any table is
written (``EmptyInputError``): a broken or empty file never replaces the run's interactions with
nothing.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timedelta, timezone
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybridrec import ingest
from hybridrec.config.loader import Config
from hybridrec.constants import INTERACTIONS, ITEMS, REJECTS, SPLIT_COL
from hybridrec.ingest import EmptyInputError
from hybridrec.ops.runner import job_main
from hybridrec.safety import privacy
from hybridrec.sources import describe, read_raw
from hybridrec.store.tables import Warehouse

NAME = "ingest"
KINDS = ("behaviour", "reviews", "items")
# Events may be stamped a little ahead of the job's clock (time zones, clock skew), not more.
FUTURE_SLACK = timedelta(days=1)
log = logging.getLogger(__name__)


class RowAccountingError(RuntimeError):
    """Input rows did not all end in interactions or rejects."""


def latest_event_ts(started: datetime) -> datetime:
    """The latest event time ingest accepts: the job's start (UTC) + 1 day, whole seconds."""
    return (started.astimezone(timezone.utc) + FUTURE_SLACK).replace(microsecond=0)


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    latest = latest_event_ts(datetime.now(timezone.utc))
    warehouse = Warehouse.from_config(spark, cfg, run_id)
    raw = read_raw(spark, cfg)
    key = privacy.read_key(cfg) if cfg.privacy.pseudonymise_user_ids else None
    validators = {
        "behaviour": lambda df: ingest.validate_behaviour(df, cfg, run_id, latest_event_ts=latest),
        "reviews": lambda df: ingest.validate_reviews(
            df, cfg, run_id, latest_event_ts=latest, rating_required=raw.reviews_rated
        ),
        "items": lambda df: ingest.validate_items(df, cfg, run_id),
    }
    counts: dict[str, float] = {}
    checked: dict[str, ingest.Validated] = {}
    cached: list[DataFrame] = []
    for kind in KINDS:
        table = getattr(raw, kind)
        if table is None:
            continue
        # Counted here and validated below: cached so the source is read once.
        table = table.cache()
        cached.append(table)
        counts[f"{kind}_in"] = table.count()
        result = validators[kind](table)
        valid = result.valid.cache()
        cached.append(valid)
        counts[f"{kind}_valid"] = valid.count()
        checked[kind] = ingest.Validated(valid, result.rejects)
    try:
        _fail_if_empty(cfg, counts, checked)
        return _write(run_id, warehouse, checked, key, counts)
    finally:
        for df in cached:
            df.unpersist()


def _write(
    run_id: str,
    warehouse: Warehouse,
    checked: dict[str, ingest.Validated],
    key: bytes | None,
    counts: dict[str, float],
) -> dict[str, float]:
    """Pseudonymise (when configured), join, split, write this run's snapshots and account."""
    if key is not None:
        for kind in ("behaviour", "reviews"):
            if kind in checked:
                checked[kind] = ingest.Validated(
                    privacy.pseudonymise(checked[kind].valid, key),
                    privacy.redact_rejects(checked[kind].rejects, key),
                )
    valid = {kind: checked[kind].valid if kind in checked else None for kind in KINDS}
    joined = ingest.join_interactions(valid["behaviour"], valid["reviews"])
    interactions = ingest.leave_last_out_split(joined)
    counts["interactions"] = warehouse.write(interactions, INTERACTIONS, run_id=run_id)
    interactions = warehouse.read(INTERACTIONS, run_id=run_id)
    rejects = reduce(
        DataFrame.unionByName,
        [checked[kind].rejects.select(*ingest.REJECT_COLUMNS) for kind in checked],
    )
    written = warehouse.write_together(
        {ITEMS: ingest.build_items(valid["items"], interactions), REJECTS: rejects}, run_id=run_id
    )
    counts["items"], counts["rejects"] = written[ITEMS], written[REJECTS]
    counts.update(
        _check_accounting(
            warehouse.read(REJECTS, run_id=run_id),
            interactions,
            warehouse.read(ITEMS, run_id=run_id),
            counts,
        )
    )
    for split, n in interactions.groupBy(SPLIT_COL).count().collect():
        counts[f"{split}_rows"] = n
    return counts


def _fail_if_empty(
    cfg: Config, counts: dict[str, float], checked: dict[str, ingest.Validated]
) -> None:
    """Raise ``EmptyInputError`` when no behaviour or review row is valid (before any write).

    Raises:
        EmptyInputError: with the rows read and why they were rejected.
    """
    events = [kind for kind in ("behaviour", "reviews") if kind in checked]
    if sum(counts[f"{kind}_valid"] for kind in events):
        return
    rows_read = sum(counts[f"{kind}_in"] for kind in events)
    reasons: dict[str, int] = {}
    for kind in events:
        # One row per distinct reason: a handful, whatever the input's size.
        for reason, n in checked[kind].rejects.groupBy("reason").count().collect():
            reasons[reason] = reasons.get(reason, 0) + n
    summary = (
        ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda x: -x[1]))
        or "no rows"
    )
    raise EmptyInputError(
        f"{describe(cfg)}: 0 valid rows in {rows_read} rows read ({summary}); no table was written"
    )


def _check_accounting(
    rejects: DataFrame, interactions: DataFrame, items: DataFrame, counts: dict[str, float]
) -> dict[str, float]:
    """Prove from this run's snapshots that every input row is in interactions, in rejects, or
    attached as a review, and every metadata row in items or rejects."""
    by_origin = dict(interactions.groupBy("origin").count().collect())
    # ``source`` names the raw table first: ``reviews:amazon:<path>``.
    by_table = dict(rejects.groupBy(F.split("source", ":").getItem(0)).count().collect())
    rejected = {kind: by_table.get(kind, 0) for kind in KINDS}
    attached = by_origin.get(ingest.ORIGIN_BEHAVIOUR_REVIEW, 0)
    expected = {
        "behaviour": by_origin.get(ingest.ORIGIN_BEHAVIOUR, 0) + attached,
        "reviews": by_origin.get(ingest.ORIGIN_REVIEW, 0) + attached,
        "items": items.where(F.col("has_metadata")).count() if "items_in" in counts else 0,
    }
    for kind, kept in expected.items():
        rows_in = counts.get(f"{kind}_in", 0)
        if rows_in != kept + rejected[kind]:
            raise RowAccountingError(
                f"{kind}: {rows_in} rows in, but {kept} kept + {rejected[kind]} rejected"
            )
    log.info(
        "row accounting ok: behaviour %d = %d kept + %d rejected; reviews %d = %d kept + %d "
        "rejected (%d attached to behaviour rows); items %d = %d kept + %d rejected",
        counts.get("behaviour_in", 0),
        expected["behaviour"],
        rejected["behaviour"],
        counts.get("reviews_in", 0),
        expected["reviews"],
        rejected["reviews"],
        attached,
        counts.get("items_in", 0),
        expected["items"],
        rejected["items"],
    )
    return {
        "behaviour_rejected": rejected["behaviour"],
        "reviews_rejected": rejected["reviews"],
        "items_rejected": rejected["items"],
        "reviews_attached": attached,
    }


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
