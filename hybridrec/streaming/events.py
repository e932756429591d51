"""Landed files to events: read as the batch reads a source, validated by ingest's own checks
(same reasons, same rejects table), and exact repeats of events already seen dropped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec import ingest
from hybridrec.config.loader import Config
from hybridrec.constants import EVENT_COL, ITEM_COL, RATING_COL, TEXT_COL, TS_COL, USER_COL
from hybridrec.safety import privacy
from hybridrec.sources import BEHAVIOUR_SCHEMA, amazon, generic

log = logging.getLogger(__name__)

# A landed CSV row is one event and may carry its review.
EVENT_SCHEMA = T.StructType(
    [
        *BEHAVIOUR_SCHEMA.fields,
        T.StructField("summary", T.StringType()),
        T.StructField(TEXT_COL, T.StringType()),
    ]
)
EVENT_COLUMNS = [USER_COL, ITEM_COL, RATING_COL, EVENT_COL, TS_COL, TEXT_COL, "origin"]
# An Amazon review is its rating event, as in the batch's reading of the same files.
AMAZON_EVENT = "rating"
UNREADABLE = "unreadable file"
_END = "\u0002hybridrec-end"


def read_landed(spark: SparkSession, paths: Sequence[str], cfg: Config) -> DataFrame:
    """Raw rows of the landed files (``EVENT_SCHEMA`` + raw, source, parse_error). Each file is
    read on its own: a CSV file's header names its own columns. A file the reader cannot open
    becomes one row with ``parse_error`` ``unreadable file``, so it is rejected, not retried."""
    frames = [_read_one(spark, path, cfg) for path in paths]
    return reduce(DataFrame.unionByName, frames)


def _read_one(spark: SparkSession, path: str, cfg: Config) -> DataFrame:
    source = f"stream:{cfg.stream.format}:{path}"
    try:
        if cfg.stream.format == "amazon":
            df = amazon.read_reviews(spark, path)
            return df.select(
                *[
                    F.lit(AMAZON_EVENT).alias(f.name) if f.name == EVENT_COL else F.col(f.name)
                    for f in EVENT_SCHEMA.fields
                ],
                "rating_raw",
                "raw",
                F.lit(source).alias("source"),
                "parse_error",
            )
        table = generic.read_csv(spark, path, {})
        return generic.to_raw(table, EVENT_SCHEMA, {}, source)
    except Exception as exc:  # noqa: BLE001 - any reader failure is this file's verdict
        log.warning("stream: %s cannot be read (%s): rejected whole", path, type(exc).__name__)
        row = {f.name: None for f in EVENT_SCHEMA.fields}
        schema = T.StructType(
            [*EVENT_SCHEMA.fields]
            + [
                T.StructField(c, T.StringType())
                for c in ("rating_raw", "raw", "source", "parse_error")
            ]
        )
        values = {
            **row,
            "rating_raw": None,
            "raw": path,
            "source": source,
            "parse_error": UNREADABLE,
        }
        return spark.createDataFrame([values], schema)


def parse_lines(lines: DataFrame, source: str) -> DataFrame:
    """Raw rows of CSV records that came one per message (``value``; a Kafka topic), in the
    landed files' column order ``user_id,item_id,event_type,event_ts,rating[,review_text]``; a
    record of another width is kept whole with ``parse_error`` ``wrong number of fields``."""
    names = [USER_COL, ITEM_COL, EVENT_COL, TS_COL, RATING_COL, TEXT_COL]
    # A sentinel field appended to the record lands where the record ends: its position is the
    # record's width, empty fields and quoted commas included.
    slots = len(names) + 2
    fields = F.from_csv(
        F.concat(F.col("value").cast("string"), F.lit("," + _END)),
        ", ".join(f"_{n} string" for n in range(slots)),
        {"quote": '"', "escape": '"', "mode": "PERMISSIVE"},
    )
    parsed = lines.select(F.col("value").cast("string").alias("raw"), fields.alias("f"))
    width = F.coalesce(*[F.when(F.col(f"f._{n}") == _END, F.lit(n)) for n in range(slots)])

    def field(name: str) -> Column:
        index = names.index(name)
        return F.when(width > index, F.col(f"f._{index}"))

    # Five fields, or six with the review; a record of another width is kept whole as rejected.
    wrong = width.isNull() | ~width.isin(len(names) - 1, len(names))
    return parsed.select(
        field(USER_COL).alias(USER_COL),
        field(ITEM_COL).alias(ITEM_COL),
        field(RATING_COL).alias("rating_raw"),
        field(RATING_COL).try_cast("double").alias(RATING_COL),
        field(EVENT_COL).alias(EVENT_COL),
        field(TS_COL).alias(TS_COL),
        F.lit(None).cast("string").alias("summary"),
        field(TEXT_COL).alias(TEXT_COL),
        "raw",
        F.lit(source).alias("source"),
        F.when(wrong, F.lit(generic.WRONG_FIELDS)).alias("parse_error"),
    )


def validate(
    raw: DataFrame, cfg: Config, snapshot: str, latest_event_ts: datetime, key: bytes | None
) -> ingest.Validated:
    """Events (``EVENT_COLUMNS``) and rejects (``ingest.REJECT_COLUMNS``) of ``raw``."""
    checked = ingest.validate_behaviour(raw, cfg, snapshot, latest_event_ts=latest_event_ts)
    valid, rejects = checked.valid, checked.rejects
    if key is not None:
        valid = privacy.pseudonymise(valid, key)
        rejects = privacy.redact_rejects(rejects, key)
    text = ingest.review_text(valid)
    events = valid.select(
        USER_COL,
        ITEM_COL,
        RATING_COL,
        EVENT_COL,
        F.col("_ts").alias(TS_COL),
        text.alias(TEXT_COL),
        F.when(text.isNotNull(), F.lit(ingest.ORIGIN_BEHAVIOUR_REVIEW))
        .otherwise(F.lit(ingest.ORIGIN_BEHAVIOUR))
        .alias("origin"),
    )
    return ingest.Validated(events, rejects.select(*ingest.REJECT_COLUMNS))


def drop_seen(events: DataFrame, seen: DataFrame) -> DataFrame:
    """``events`` less exact repeats of a row of ``seen`` (same user, item, type, time, rating
    and text; nulls equal)."""
    keys = [USER_COL, ITEM_COL, EVENT_COL, TS_COL, RATING_COL, TEXT_COL]
    seen = seen.select(*[F.col(k).alias(f"_s_{k}") for k in keys])
    condition = reduce(lambda a, b: a & b, [events[k].eqNullSafe(seen[f"_s_{k}"]) for k in keys])
    return events.join(seen, condition, "left_anti")
