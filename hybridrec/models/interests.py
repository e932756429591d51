"""What each user is into: the topics' shares of their history, their tags and recent shift,
and how well those tags foresee the next item (``hybridrec.models.topics`` makes the topics).

- ``user_interests``: per user, each topic's share of their history weighted as the user text
  vector weighs reviews (rating, recency), with VADER's sentiment standing in for a missing
  rating where the event has review text (``with_felt_ratings``); the top tags and the shift
  between the last ``topics.recent_days`` of the history and before.
- ``next_item_hits``: how often each user's next item (the test split) falls in their tags,
  against as many of the most popular topics; ``sentiment_agreement``: VADER's polarity
  against the stars.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config.loader import Config
from hybridrec.constants import (
    ITEM_COL,
    RATING_COL,
    SPLIT_COL,
    TEST,
    TEXT_COL,
    TS_COL,
    USER_COL,
)
from hybridrec.models.embedding import review_weight
from hybridrec.models.folds import history
from hybridrec.models.topics import TOPIC_COL
from udfs import sentiment


def with_felt_ratings(events: DataFrame, cfg: Config) -> DataFrame:
    """``events`` where an event with review text and no rating gets the text's sentiment as its
    rating (``topics.sentiment`` vader). Only those rows reach the analyser: a pandas UDF inside
    a CASE would run on every row."""
    if cfg.topics.sentiment != "vader":
        return events
    has_text = F.col(TEXT_COL).isNotNull() & (F.trim(TEXT_COL) != "")
    unrated = F.col(RATING_COL).isNull() & has_text
    felt = sentiment.as_rating(
        sentiment.compound_udf(TEXT_COL), cfg.ingest.min_rating, cfg.ingest.max_rating
    )
    return events.where(~unrated).unionByName(
        events.where(unrated).withColumn(RATING_COL, felt.cast(T.DoubleType()))
    )


def topic_popularity(events: DataFrame, assigned: DataFrame) -> DataFrame:
    """topic_id, popularity: the history events on each topic's items (one row per topic)."""
    return (
        events.join(assigned.select(ITEM_COL, TOPIC_COL), ITEM_COL)
        .groupBy(TOPIC_COL)
        .agg(F.count("*").alias("popularity"))
    )


def user_interests(
    events: DataFrame,
    assigned: DataFrame,
    named: dict[int, str],
    cfg: Config,
    popularity: DataFrame | None = None,
) -> DataFrame:
    """Per user with history on topic-assigned items: every topic's share of their weighted
    history (``topic_ids`` / ``shares``, largest first, ties to the more popular topic), the top
    ``topics.interests_top`` as tags, and the shift: half the L1 distance between the topic
    shares of the last ``topics.recent_days`` before the newest of ``events`` and those before
    (null where either is empty), with the topic that rose most.

    ``events``: the users' history rows (the batch: the served fold's history; the stream: the
    touched users' whole history). ``popularity`` (``topic_popularity``): the ties' order,
    counted over ``events`` when not given.
    """
    spark = events.sparkSession
    newest = events.agg(F.max(TS_COL)).first()[0]
    if newest is None:
        raise ValueError("user interests need a history: no event was given")
    recent_from = F.lit(newest) - F.expr(f"INTERVAL {int(cfg.topics.recent_days * 86400)} SECONDS")
    tags = spark.createDataFrame(list(named.items()), f"{TOPIC_COL} int, tag string")
    # A user with one event in each of several topics has ties; the more popular topic goes
    # first, the likelier guess for what comes next.
    if popularity is None:
        popularity = topic_popularity(events, assigned)
    tags = tags.join(popularity, TOPIC_COL, "left").fillna(0, ["popularity"])
    weighted = (
        with_felt_ratings(events, cfg)
        .select(
            USER_COL,
            ITEM_COL,
            review_weight(cfg).alias("weight"),
            (F.col(TS_COL) > recent_from).alias("recent"),
        )
        .join(assigned.select(ITEM_COL, TOPIC_COL), ITEM_COL)
    )
    per_topic = weighted.groupBy(USER_COL, TOPIC_COL).agg(
        F.count("*").alias("events"),
        F.sum("weight").alias("w"),
        F.sum(F.when(F.col("recent"), F.col("weight")).otherwise(0.0)).alias("w_recent"),
        F.sum(F.when(~F.col("recent"), F.col("weight")).otherwise(0.0)).alias("w_earlier"),
        F.sum(F.col("recent").cast("int")).alias("n_recent"),
    )
    user = Window.partitionBy(USER_COL)
    shares = (
        per_topic.withColumn("share", F.try_divide("w", F.sum("w").over(user)))
        # Null where the user has no event on that side of the cut (no share to compare).
        .withColumn("recent_share", F.try_divide("w_recent", F.sum("w_recent").over(user)))
        .withColumn("earlier_share", F.try_divide("w_earlier", F.sum("w_earlier").over(user)))
        .join(F.broadcast(tags), TOPIC_COL)
    )
    ordered = F.sort_array(
        F.collect_list(
            F.struct(
                (-F.col("share")).alias("neg"),
                (-F.col("popularity")).alias("neg_popularity"),
                TOPIC_COL,
                "share",
                "tag",
            )
        )
    )
    rise = F.coalesce("recent_share", F.lit(0.0)) - F.coalesce("earlier_share", F.lit(0.0))
    top_n = cfg.topics.interests_top
    grouped = shares.groupBy(USER_COL).agg(
        F.sum("events").cast("int").alias("events"),
        ordered.alias("ordered"),
        F.sum("n_recent").cast("int").alias("recent_events"),
        (F.sum("events") - F.sum("n_recent")).cast("int").alias("earlier_events"),
        (
            F.sum(
                F.abs(
                    F.coalesce("recent_share", F.lit(0.0)) - F.coalesce("earlier_share", F.lit(0.0))
                )
            )
            / 2.0
        ).alias("distance"),
        F.max_by(F.struct(TOPIC_COL, "tag"), rise).alias("rising"),
    )
    both = (F.col("recent_events") > 0) & (F.col("earlier_events") > 0)
    return grouped.select(
        USER_COL,
        "events",
        F.transform("ordered", lambda s: s[TOPIC_COL]).alias("topic_ids"),
        F.transform("ordered", lambda s: s["share"]).alias("shares"),
        F.col("ordered")[0][TOPIC_COL].alias("top_topic_id"),
        F.col("ordered")[0]["tag"].alias("top_tag"),
        F.col("ordered")[0]["share"].alias("top_share"),
        F.transform(F.slice("ordered", 1, top_n), lambda s: s[TOPIC_COL]).alias("tag_topic_ids"),
        F.transform(F.slice("ordered", 1, top_n), lambda s: s["tag"]).alias("tags"),
        "recent_events",
        "earlier_events",
        F.when(both, F.col("distance")).alias("shift"),
        F.when(both & (F.col("distance") > 0), F.col("rising")[TOPIC_COL]).alias("rising_topic_id"),
        F.when(both & (F.col("distance") > 0), F.col("rising")["tag"]).alias("rising_tag"),
    )


@dataclass(frozen=True)
class Hits:
    """Next-item checks: users counted, the share whose test item's topic is among their tags,
    the share for the same number of most popular topics, and the paired difference's interval."""

    users: int
    interests: float
    prior: float
    low: float
    high: float


def next_item_hits(
    interactions: DataFrame,
    assigned: DataFrame,
    interests: DataFrame,
    confidence: float,
    fold: str = TEST,
) -> Hits:
    """How often a user's ``fold`` item (the test split; the validation split for choices made
    without test) falls in one of their tags (``interests``, from that fold's history), against
    the most popular topics of that history, paired per user and as many as the user's tags: a
    user whose history holds one topic has one tag, and is compared with the one most popular
    topic, so that both sides make the same number of guesses."""
    counted = (
        topic_popularity(history(interactions, fold), assigned)
        .toPandas()  # one row per topic
        .sort_values(["popularity", TOPIC_COL], ascending=[False, True])
    )
    prior = interactions.sparkSession.createDataFrame(
        pd.DataFrame(
            {
                TOPIC_COL: counted[TOPIC_COL].astype("int32"),
                "popular_rank": range(1, len(counted) + 1),
            }
        ),
        f"{TOPIC_COL} int, popular_rank int",
    )
    nexts = (
        interactions.where(F.col(SPLIT_COL) == fold)
        .select(USER_COL, ITEM_COL)
        .join(assigned.select(ITEM_COL, TOPIC_COL), ITEM_COL)
        .join(interests.select(USER_COL, "tag_topic_ids"), USER_COL)
        .join(F.broadcast(prior), TOPIC_COL, "left")
        .select(
            F.array_contains("tag_topic_ids", F.col(TOPIC_COL)).cast("double").alias("hit"),
            F.coalesce(F.col("popular_rank") <= F.size("tag_topic_ids"), F.lit(False))
            .cast("double")
            .alias("prior"),
        )
    )
    row = nexts.agg(
        F.count("*").alias("n"),
        F.avg("hit").alias("hit"),
        F.avg("prior").alias("prior"),
        F.stddev_samp(F.col("hit") - F.col("prior")).alias("sd"),
    ).first()
    n = int(row["n"])
    if not n:
        return Hits(0, float("nan"), float("nan"), float("nan"), float("nan"))
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * (row["sd"] or 0.0) / np.sqrt(n)
    gain = row["hit"] - row["prior"]
    return Hits(n, float(row["hit"]), float(row["prior"]), float(gain - half), float(gain + half))


def sentiment_agreement(interactions: DataFrame, cfg: Config) -> dict[str, float]:
    """VADER against the stars on up to ``topics.sentiment_check_rows`` rated reviews: the share
    of polar reviews (stars at or above 4, or at or below 2 on a 1-5 scale, scaled to the
    configured one) whose compound score has the same sign past VADER's thresholds, and the
    Spearman correlation of compound and stars."""
    n = cfg.topics.sentiment_check_rows
    rated = interactions.where(
        F.col(RATING_COL).isNotNull() & F.col(TEXT_COL).isNotNull() & (F.trim(TEXT_COL) != "")
    )
    total = rated.count()
    if not n or not total:
        return {}
    picked = (
        rated.sample(fraction=min(1.0, 1.2 * n / total), seed=cfg.topics.seed)
        .limit(n)
        .select(RATING_COL, sentiment.compound_udf(TEXT_COL).alias("compound"))
        .toPandas()
    )
    low, high = cfg.ingest.min_rating, cfg.ingest.max_rating
    scaled = 1 + 4 * (picked[RATING_COL] - low) / (high - low)
    polar = (scaled >= 4) | (scaled <= 2)
    agree = ((scaled >= 4) & (picked["compound"] >= sentiment.POSITIVE)) | (
        (scaled <= 2) & (picked["compound"] <= sentiment.NEGATIVE)
    )
    spearman = picked[RATING_COL].rank().corr(picked["compound"].rank())
    return {
        "sentiment_checked": float(len(picked)),
        "sentiment_polar_agreement": float(agree[polar].mean()) if polar.any() else float("nan"),
        "sentiment_spearman": float(spearman) if spearman == spearman else float("nan"),
    }
