"""Amazon review data (McAuley lab, 2014 and 2018 formats): JSON lines, plain or gzip.

A review record is both a behaviour event (its star rating) and review text, so the reader gives a
reviews table and no separate behaviour table (``reviews_rated``: a review without ``overall`` is
a rating event without its rating, and rejected): each input line then ends in exactly one row of
``interactions`` or ``rejects``. Lines are read as text first, so ``raw`` is the line itself (its
bytes as they are in the file; ingest rejects one that is not UTF-8) and a line that is not a JSON
record is kept as it came, with ``parse_error`` ``unparseable record``.

A record is a line ended by ``\n`` (a CRLF line's ``\r`` is its line ending, not in ``raw``): a
carriage return inside a line is data, and a raw control character inside a JSON string (some
reviews hold a literal CR) is read as part of the text rather than making the record unparseable.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.sources import RawTables
from hybridrec.sources.generic import LINE_SEP, without_line_end_cr

REVIEW_JSON = T.StructType(
    [
        T.StructField("reviewerID", T.StringType()),
        T.StructField("asin", T.StringType()),
        T.StructField("overall", T.StringType()),
        T.StructField("summary", T.StringType()),
        T.StructField("reviewText", T.StringType()),
        T.StructField("unixReviewTime", T.StringType()),
        T.StructField("_corrupt_record", T.StringType()),
    ]
)
META_JSON = T.StructType(
    [
        T.StructField("asin", T.StringType()),
        T.StructField("title", T.StringType()),
        T.StructField("description", T.StringType()),
        T.StructField("category", T.StringType()),
        T.StructField("_corrupt_record", T.StringType()),
    ]
)
# from_json fills the corrupt-record field of a line that is not a JSON record. A review's text
# may hold a raw CR or tab: strict JSON would reject the whole review for it.
JSON_OPTIONS = {
    "mode": "PERMISSIVE",
    "columnNameOfCorruptRecord": "_corrupt_record",
    "allowUnquotedControlChars": "true",
}
UNPARSEABLE = "unparseable record"
HTML_TAG = r"<[A-Za-z/!][^>]*>?"  # a tag, possibly cut off; a bare "<" is text


def read(spark: SparkSession, reviews_path: str, meta_path: str | None) -> RawTables:
    return RawTables(
        behaviour=None,
        reviews=read_reviews(spark, reviews_path),
        items=read_meta(spark, meta_path) if meta_path else None,
        reviews_rated=True,
    )


def _lines(spark: SparkSession, path: str) -> DataFrame:
    """The file's records as ``raw``, one a line (see the module doc)."""
    # Spark's default also ends a line at a bare \r, which cut a review holding one in two.
    text = spark.read.option("lineSep", LINE_SEP).text(path)
    return text.select(without_line_end_cr(F.col("value")).alias("raw"))


def read_reviews(spark: SparkSession, path: str) -> DataFrame:
    lines = _lines(spark, path)
    parsed = lines.withColumn("r", F.from_json("raw", REVIEW_JSON, JSON_OPTIONS))
    return parsed.select(
        F.col("r.reviewerID").alias("user_id"),
        F.col("r.asin").alias("item_id"),
        # Kept as text here so that a non-numeric rating is rejected by ingest, not nulled silently.
        F.col("r.overall").alias("rating_raw"),
        F.col("r.summary").alias("summary"),
        F.col("r.reviewText").alias("review_text"),
        F.col("r.unixReviewTime").alias("event_ts"),
        "raw",
        F.lit(f"reviews:amazon:{path}").alias("source"),
        _parse_error("r"),
    ).withColumn("rating", F.expr("try_cast(rating_raw as double)"))


def read_meta(spark: SparkSession, path: str) -> DataFrame:
    """Item metadata: list-valued description and categories joined, HTML stripped; the
    categories (minus the top one, which every item of a file shares) follow the description."""
    lines = _lines(spark, path)
    parsed = lines.withColumn("m", F.from_json("raw", META_JSON, JSON_OPTIONS))
    description = F.regexp_replace(
        F.coalesce(
            F.expr("array_join(from_json(m.description, 'array<string>'), ' ')"),
            F.col("m.description"),
        ),
        HTML_TAG,
        " ",
    )
    title = F.trim(F.regexp_replace(F.col("m.title"), HTML_TAG, " "))
    categories = F.expr("array_join(slice(from_json(m.category, 'array<string>'), 2, 100), ', ')")
    text = F.concat_ws(
        ". ", F.when(F.trim(description) != "", description), F.when(categories != "", categories)
    )
    return parsed.select(
        F.col("m.asin").alias("item_id"),
        F.when(title != "", title).alias("title"),
        F.trim(F.regexp_replace(F.regexp_replace(text, "&amp;", "&"), r"\s+", " ")).alias(
            "description"
        ),
        "raw",
        F.lit(f"items:amazon:{path}").alias("source"),
        _parse_error("m"),
    )


def _parse_error(struct: str) -> Column:
    """``unparseable record`` for a line that is not a JSON record (an empty line included)."""
    corrupt = F.col(f"{struct}._corrupt_record").isNotNull() | F.col(struct).isNull()
    return F.when(corrupt, F.lit(UNPARSEABLE)).alias("parse_error")
