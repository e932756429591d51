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
    """Raw rows of the landed files (``EVENT_SCHEMA`` + raw, source, parse_error).

    CSV files are read together where their first lines (header and line ending) are the same,
    one read per kind, as the batch's generic reader reads a table: a file's header names its
    own columns. A file the reader cannot open becomes one row with ``parse_error``
    ``unreadable file``: rejected, not retried.
    """
    if cfg.stream.format == "amazon":
        groups = {(): list(paths)}
    else:
        groups = {}
        for path in paths:
            groups.setdefault(_first_line(spark, path), []).append(path)
    frames = []
    for first, group in groups.items():
        try:
            frames.append(_read_group(spark, group, cfg, first))
        except Exception as exc:  # noqa: BLE001 - any reader failure is these files' verdict
            log.warning("stream: %s cannot be read (%s): rejected whole", group, exc)
            frames += [_unreadable(spark, path, cfg) for path in group]
    return reduce(DataFrame.unionByName, frames)


def _first_line(spark: SparkSession, path: str) -> tuple[bytes, bool] | None:
    """The file's first line (without its ending) and whether it ends in CRLF; None for a file
    that cannot be opened. Read on the driver through Hadoop's file system: a few bytes."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    try:
        fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        stream = fs.open(hpath)
        try:
            line = bytearray()
            while len(line) < 65536:
                byte = stream.read()
                if byte < 0 or byte == 10:
                    break
                line.append(byte)
        finally:
            stream.close()
    except Exception:  # noqa: BLE001 - read (and rejected) as its own group
        return None
    crlf = line.endswith(b"\r")
    return bytes(line.rstrip(b"\r")), crlf


def _read_group(spark: SparkSession, paths: list[str], cfg: Config, first) -> DataFrame:
    if cfg.stream.format == "amazon":
        df = amazon.read_reviews(spark, paths)
        df = df.select(
            *[
                F.lit(AMAZON_EVENT).alias(f.name) if f.name == EVENT_COL else F.col(f.name)
                for f in EVENT_SCHEMA.fields
            ],
            "rating_raw",
            "raw",
            "parse_error",
        )
    else:
        if first is None:
            raise OSError("cannot be opened")
        options = {"lineSep": "\r\n" if first[1] else "\n"}
        table = generic.read_csv(spark, paths, options, _plain_header(first[0]))
        df = generic.to_raw(table, EVENT_SCHEMA, {}, "")
    # The file each row came from: the name of the landed file, as ingest's sources name theirs.
    source = F.concat(F.lit(f"stream:{cfg.stream.format}:"), F.col("_metadata.file_path"))
    return df.withColumn("source", source)


def _plain_header(line: bytes) -> list[str] | None:
    """The column names of a first line Spark would read the same way (ASCII, no quote or
    escape, distinct non-empty names); None leaves the header to Spark."""
    names = line.decode("ascii", "replace").split(",")
    plain = line.isascii() and not {ord('"'), ord("\\")} & set(line)
    distinct = len({n.lower() for n in names}) == len(names) and all(names)
    return names if plain and distinct else None


def _unreadable(spark: SparkSession, path: str, cfg: Config) -> DataFrame:
    schema = T.StructType(
        [*EVENT_SCHEMA.fields]
        + [T.StructField(c, T.StringType()) for c in ("rating_raw", "raw", "source", "parse_error")]
    )
    row = {f.name: None for f in schema.fields}
    row.update(raw=path, source=f"stream:{cfg.stream.format}:{path}", parse_error=UNREADABLE)
    return spark.createDataFrame([row], schema)


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
