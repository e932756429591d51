"""Readers that turn each supported source into raw tables of one shape, for ``ingest``.

Raw ``behaviour``: user_id, item_id, rating_raw (text, where the source has it), rating,
event_type, event_ts (string: epoch seconds, millis or ISO), raw, source, parse_error. Raw
``reviews``: user_id, item_id, rating_raw, rating, summary, review_text, event_ts, raw, source,
parse_error. Raw ``items``: item_id, title, description, raw, source, parse_error.

``raw`` is the record as read, kept so that a rejected row can be inspected as it came in: a JSON
line as it is in the file, a CSV record as the reader saw it (see ``generic``), a Parquet row as
JSON. ``parse_error`` is the reader's own finding (``wrong number of fields``, ``unparseable
record``), null for a record it could read. ``source`` names the table first
(``reviews:amazon:<path>``). A source without a behaviour (or items) table gives None for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config.loader import Config

BEHAVIOUR_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("rating", T.DoubleType()),
        T.StructField("event_type", T.StringType()),
        T.StructField("event_ts", T.StringType()),
    ]
)
REVIEW_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("rating", T.DoubleType()),
        T.StructField("summary", T.StringType()),
        T.StructField("review_text", T.StringType()),
        T.StructField("event_ts", T.StringType()),
    ]
)
ITEM_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType()),
        T.StructField("title", T.StringType()),
        T.StructField("description", T.StringType()),
    ]
)


@dataclass
class RawTables:
    """The raw tables of one source. ``reviews_rated``: each review is also the source's rating
    event (Amazon's ``overall``), so ingest rejects a review that has no rating."""

    behaviour: DataFrame | None
    reviews: DataFrame | None
    items: DataFrame | None
    reviews_rated: bool = False


def describe(cfg: Config) -> str:
    """The source in a few words, for messages: ``amazon reviews /data/x.json.gz``."""
    kind = cfg.source.kind
    if kind == "amazon":
        return f"amazon reviews {cfg.source.amazon.reviews_path}"
    if kind == "movielens":
        return f"movielens {cfg.source.movielens.path}"
    if kind == "generic":
        generic = cfg.source.generic
        tables = [
            f"{name} {generic[name].path}"
            for name in ("behaviour", "reviews")
            if generic[name].path
        ]
        return f"generic {generic.format} ({', '.join(tables)})"
    return kind


def read_raw(spark: SparkSession, cfg: Config) -> RawTables:
    if cfg.source.kind == "sample":
        from hybridrec.sources import sample

        frames = sample.generate(cfg)
        return RawTables(
            behaviour=frame_to_raw(
                spark, frames["behaviour"], BEHAVIOUR_SCHEMA, "behaviour:sample"
            ),
            reviews=frame_to_raw(spark, frames["reviews"], REVIEW_SCHEMA, "reviews:sample"),
            items=frame_to_raw(spark, frames["items"], ITEM_SCHEMA, "items:sample"),
        )
    if cfg.source.kind == "movielens":
        from hybridrec.sources import movielens

        return movielens.read(spark, cfg.source.movielens.path)
    if cfg.source.kind == "generic":
        from hybridrec.sources import generic

        return generic.read(spark, cfg)
    from hybridrec.sources import amazon

    return amazon.read(spark, cfg.source.amazon.reviews_path, cfg.source.amazon.meta_path)


# Local data travels inside the tasks that read it. Below a size threshold Spark makes it a
# local relation split into only defaultParallelism tasks (3 MB each for the sample on 2 cores;
# Spark warns above 1000 KiB a task); above it, one task per Arrow batch. So: always the batch
# path, with batches cut well below the warning.
LOCAL_TASK_BYTES = 256 * 1024
ARROW_BATCH_ROWS = "spark.sql.execution.arrow.maxRecordsPerBatch"
LOCAL_RELATION_BYTES = "spark.sql.execution.arrow.localRelationThreshold"


def rows_per_task(frame: pd.DataFrame) -> int:
    """Rows of ``frame`` that fit in ``LOCAL_TASK_BYTES``."""
    if frame.empty:
        return 1
    row_bytes = frame.memory_usage(index=False, deep=True).sum() / len(frame)
    return max(1, int(LOCAL_TASK_BYTES // max(row_bytes, 1)))


@contextlib.contextmanager
def _arrow_batch_rows(spark: SparkSession, rows: int) -> Iterator[None]:
    settings = {ARROW_BATCH_ROWS: str(rows), LOCAL_RELATION_BYTES: "0"}
    before = {key: spark.conf.get(key) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)


def frame_to_raw(
    spark: SparkSession, frame: pd.DataFrame, schema: T.StructType, source: str
) -> DataFrame:
    """A pandas frame (sample data, test data) in the raw shape, the row itself as ``raw``."""
    frame = frame[[f.name for f in schema.fields]].astype(object).where(frame.notna(), None)
    with _arrow_batch_rows(spark, rows_per_task(frame)):
        df = spark.createDataFrame(frame, schema=schema)
    return df.select(
        "*",
        F.to_json(F.struct(*schema.fieldNames())).alias("raw"),
        F.lit(source).alias("source"),
        F.lit(None).cast("string").alias("parse_error"),
    )
