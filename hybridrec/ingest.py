"""Pure transforms of the ingest stage: validate raw rows, join behaviour with reviews, split.

Every raw row ends in exactly one place: an ``interactions`` row, a ``rejects`` row with a reason,
or (a review) attached to the behaviour row of the same user and item. ``origin`` on each
interaction records which, so the job can prove that no row was lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from hybridrec.config import Config
from hybridrec.constants import (
    EVENT_COL,
    ITEM_COL,
    RATING_COL,
    SPLIT_COL,
    TEST,
    TEXT_COL,
    TRAIN,
    TS_COL,
    USER_COL,
    VALIDATION,
)

ORIGIN_BEHAVIOUR = "behaviour"
ORIGIN_BEHAVIOUR_REVIEW = "behaviour+review"
ORIGIN_REVIEW = "review"
REVIEW_EVENT = "review"


@dataclass
class Validated:
    valid: DataFrame
    rejects: DataFrame


def parse_event_ts(raw: Column) -> Column:
    """Epoch seconds, epoch milliseconds or an ISO-8601 string; null when it is none of these."""
    text = F.trim(raw.cast("string"))
    return (
        F.when(text.rlike(r"^\d{1,11}$"), F.timestamp_seconds(text.cast("long")))
        .when(text.rlike(r"^\d{12,14}$"), F.timestamp_millis(text.cast("long")))
        .otherwise(F.expr(f"try_to_timestamp({_sql(text)})"))
    )


def _sql(col: Column) -> str:
    """The SQL text of a column expression, to nest it in F.expr."""
    return col._jc.toString()


def _blank(col: str) -> Column:
    return F.col(col).isNull() | (F.trim(F.col(col)) == "")


def _reason(df: DataFrame, checks: list[tuple[Column, str]]) -> Column:
    """The first failing check's reason, or null for a valid row."""
    reason = F.lit(None).cast("string")
    for condition, text in reversed(checks):
        reason = F.when(condition, F.lit(text)).otherwise(reason)
    return reason


def _common_checks(df: DataFrame, cfg: Config) -> list[tuple[Column, str]]:
    rating = F.col(RATING_COL)
    checks = [
        (_blank(USER_COL) & _blank(ITEM_COL) & F.col(TS_COL).isNull(), "unparseable record"),
        (_blank(USER_COL), f"missing {USER_COL}"),
        (_blank(ITEM_COL), f"missing {ITEM_COL}"),
        (F.col("_ts").isNull(), f"invalid {TS_COL}"),
    ]
    if "rating_raw" in df.columns:
        checks.append((F.col("rating_raw").isNotNull() & rating.isNull(), "rating is not a number"))
    checks.append(
        (
            rating.isNotNull()
            & (
                rating.isNaN() | (rating < cfg.ingest.min_rating) | (rating > cfg.ingest.max_rating)
            ),
            f"rating outside [{cfg.ingest.min_rating}, {cfg.ingest.max_rating}]",
        )
    )
    return checks


def _split_rejects(
    df: DataFrame, checks: list, repeats: Window, repeat_reason: str, run_id: str
) -> Validated:
    """Reject a row with its first failing check's reason; of the valid rows that fall in one
    ``repeats`` window, keep the first and reject the others with ``repeat_reason``."""
    flagged = df.withColumn("_reason", _reason(df, checks))
    flagged = flagged.withColumn(
        "_reason",
        F.when(
            F.col("_reason").isNull() & (F.row_number().over(repeats) > 1), F.lit(repeat_reason)
        ).otherwise(F.col("_reason")),
    )
    rejects = flagged.where(F.col("_reason").isNotNull()).select(
        "source", "raw", F.col("_reason").alias("reason"), F.lit(run_id).alias("run_id")
    )
    return Validated(flagged.where(F.col("_reason").isNull()).drop("_reason"), rejects)


def _exact_repeats(keys: list[str]) -> Window:
    # Exact repeats of a valid row (same keys and same raw record) carry no new information.
    return Window.partitionBy(*keys, "raw").orderBy(F.lit(1))


def validate_behaviour(df: DataFrame, cfg: Config, run_id: str) -> Validated:
    df = df.withColumn("_ts", parse_event_ts(F.col(TS_COL)))
    checks = _common_checks(df, cfg)
    checks += [
        (
            ~F.col(EVENT_COL).isin(list(cfg.ingest.event_types)) | F.col(EVENT_COL).isNull(),
            f"{EVENT_COL} not in {list(cfg.ingest.event_types)}",
        ),
        (
            (F.col(EVENT_COL) == "rating") & F.col(RATING_COL).isNull(),
            "rating event without rating",
        ),
    ]
    repeats = _exact_repeats([USER_COL, ITEM_COL, "_ts", EVENT_COL])
    return _split_rejects(df, checks, repeats, "duplicate row", run_id)


def validate_reviews(df: DataFrame, cfg: Config, run_id: str) -> Validated:
    df = df.withColumn("_ts", parse_event_ts(F.col(TS_COL)))
    repeats = _exact_repeats([USER_COL, ITEM_COL, "_ts"])
    return _split_rejects(df, _common_checks(df, cfg), repeats, "duplicate row", run_id)


def validate_items(df: DataFrame, run_id: str) -> Validated:
    checks = [(_blank(ITEM_COL), f"missing {ITEM_COL}")]
    # Metadata dumps repeat products: keep the record with the most text, reject the others.
    richest = Window.partitionBy(ITEM_COL).orderBy(
        F.length(F.coalesce("description", F.lit(""))).desc(), F.col("raw")
    )
    return _split_rejects(df, checks, richest, f"duplicate {ITEM_COL}", run_id)


def review_text(df: DataFrame) -> Column:
    """Summary and body as one text; null when both are empty."""
    summary = F.when(~_blank("summary"), F.trim("summary"))
    body = F.when(~_blank(TEXT_COL), F.trim(TEXT_COL))
    joined = F.concat_ws(". ", summary, body)
    return F.when(joined != "", joined)


def join_interactions(behaviour: DataFrame | None, reviews: DataFrame | None) -> DataFrame:
    """One row per behaviour event, carrying the review of the same user and item.

    The k-th latest review of a (user, item) pair attaches to its k-th latest behaviour row; a
    review left over (no behaviour row for it) is an interaction of its own, so no text is lost.
    """
    if behaviour is None and reviews is None:
        raise ValueError("the source gave neither a behaviour nor a reviews table")
    pair_rank = Window.partitionBy(USER_COL, ITEM_COL).orderBy(F.col("_ts").desc(), F.col("raw"))
    if reviews is not None:
        r = reviews.select(
            USER_COL,
            ITEM_COL,
            F.col(RATING_COL).alias("_r_rating"),
            F.col("_ts").alias("_r_ts"),
            review_text(reviews).alias(TEXT_COL),
            F.row_number().over(pair_rank).alias("_k"),
        )
    if behaviour is None:
        return r.select(
            USER_COL,
            ITEM_COL,
            F.col("_r_rating").alias(RATING_COL),
            F.lit(REVIEW_EVENT).alias(EVENT_COL),
            F.col("_r_ts").alias(TS_COL),
            TEXT_COL,
            F.lit(ORIGIN_REVIEW).alias("origin"),
        )
    b = behaviour.select(
        USER_COL,
        ITEM_COL,
        RATING_COL,
        EVENT_COL,
        F.col("_ts").alias("_b_ts"),
        F.row_number().over(pair_rank).alias("_k"),
        F.lit(True).alias("_has_b"),
    )
    if reviews is None:
        return b.select(
            USER_COL,
            ITEM_COL,
            RATING_COL,
            EVENT_COL,
            F.col("_b_ts").alias(TS_COL),
            F.lit(None).cast("string").alias(TEXT_COL),
            F.lit(ORIGIN_BEHAVIOUR).alias("origin"),
        )
    joined = b.join(r, [USER_COL, ITEM_COL, "_k"], "full_outer")
    has_b = F.col("_has_b").isNotNull()
    return joined.select(
        USER_COL,
        ITEM_COL,
        # A behaviour row without a rating takes its review's (null when there is no review).
        F.coalesce(RATING_COL, "_r_rating").alias(RATING_COL),
        F.when(has_b, F.col(EVENT_COL)).otherwise(F.lit(REVIEW_EVENT)).alias(EVENT_COL),
        F.coalesce("_b_ts", "_r_ts").alias(TS_COL),
        TEXT_COL,
        F.when(has_b & F.col("_r_ts").isNotNull(), F.lit(ORIGIN_BEHAVIOUR_REVIEW))
        .when(has_b, F.lit(ORIGIN_BEHAVIOUR))
        .otherwise(F.lit(ORIGIN_REVIEW))
        .alias("origin"),
    )


def leave_last_out_split(interactions: DataFrame) -> DataFrame:
    """Per user, the latest item is test and the one before it validation; the rest is train.

    Items are ordered by the pair's latest event, so all events of one (user, item) share a split
    and a held-out item never also appears in train. A user with two items gives no validation
    item, a user with one keeps it in train.
    """
    pairs = interactions.groupBy(USER_COL, ITEM_COL).agg(F.max(TS_COL).alias("_last"))
    by_user = Window.partitionBy(USER_COL)
    newest_first = by_user.orderBy(F.col("_last").desc(), F.col(ITEM_COL).desc())
    pairs = pairs.withColumn("_r", F.row_number().over(newest_first)).withColumn(
        "_n", F.count(F.lit(1)).over(by_user)
    )
    split = (
        F.when((F.col("_r") == 1) & (F.col("_n") >= 2), F.lit(TEST))
        .when((F.col("_r") == 2) & (F.col("_n") >= 3), F.lit(VALIDATION))
        .otherwise(F.lit(TRAIN))
    )
    pairs = pairs.select(USER_COL, ITEM_COL, split.alias(SPLIT_COL))
    return interactions.join(pairs, [USER_COL, ITEM_COL], "inner")


def build_items(items: DataFrame | None, interactions: DataFrame) -> DataFrame:
    """The catalog: metadata items plus every item seen in interactions (text null if unknown)."""
    seen = interactions.select(ITEM_COL).distinct()
    if items is None:
        return seen.select(
            ITEM_COL,
            F.lit(None).cast("string").alias("title"),
            F.lit(None).cast("string").alias("description"),
            F.lit(False).alias("has_metadata"),
        )
    meta = items.select(
        ITEM_COL,
        F.when(~_blank("title"), F.trim("title")).alias("title"),
        F.when(~_blank("description"), F.trim("description")).alias("description"),
        F.lit(True).alias("has_metadata"),
    )
    return meta.join(seen, ITEM_COL, "full_outer").select(
        ITEM_COL,
        "title",
        "description",
        F.coalesce("has_metadata", F.lit(False)).alias("has_metadata"),
    )
