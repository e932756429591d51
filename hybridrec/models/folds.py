"""Which interactions each fold may learn from and is judged on (see ``constants.FOLDS``).

The ``early`` fold has no split of its own in the interactions table: per user with at least
two train items, the newest (ordered as ``ingest.leave_last_out_split`` orders, by the pair's
latest event, then item id) is its held-out item and the rest of train its history. It is
labelled here, when a fold asks for it, so the table's contract stays train / validation / test.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from hybridrec.config.loader import Config
from hybridrec.constants import (
    EARLY,
    FOLDS,
    ITEM_COL,
    SPLIT_COL,
    TEST,
    TRAIN,
    TS_COL,
    USER_COL,
    VALIDATION,
)

log = logging.getLogger(__name__)


def history(interactions: DataFrame, fold: str) -> DataFrame:
    """The interactions a model of ``fold`` is fitted on; the fold's own split is held out."""
    return _labelled(interactions, fold).where(F.col(SPLIT_COL).isin(list(FOLDS[fold])))


def held_out(interactions: DataFrame, fold: str) -> DataFrame:
    """The interactions ``fold`` is judged on (its users' held-out items)."""
    return _labelled(interactions, fold).where(F.col(SPLIT_COL) == fold)


def _labelled(interactions: DataFrame, fold: str) -> DataFrame:
    if fold not in FOLDS:
        raise ValueError(f"unknown fold {fold!r}; folds are {list(FOLDS)}")
    return with_early_split(interactions) if fold == EARLY else interactions


def with_early_split(interactions: DataFrame) -> DataFrame:
    """``interactions`` with each user's newest train item (of two or more) labelled early."""
    pairs = (
        interactions.where(F.col(SPLIT_COL) == TRAIN)
        .groupBy(USER_COL, ITEM_COL)
        .agg(F.max(TS_COL).alias("_last"))
    )
    by_user = Window.partitionBy(USER_COL)
    newest_first = by_user.orderBy(F.col("_last").desc(), F.col(ITEM_COL).desc())
    newest = (
        pairs.withColumn("_r", F.row_number().over(newest_first))
        .withColumn("_n", F.count(F.lit(1)).over(by_user))
        .where((F.col("_r") == 1) & (F.col("_n") >= 2))
        .select(USER_COL, ITEM_COL, F.lit(True).alias("_early"))
    )
    return (
        interactions.join(newest, [USER_COL, ITEM_COL], "left")
        .withColumn(
            SPLIT_COL,
            F.when(F.col("_early").isNotNull(), F.lit(EARLY)).otherwise(F.col(SPLIT_COL)),
        )
        .drop("_early")
    )


def model_folds(interactions: DataFrame, cfg: Config) -> tuple[str, ...]:
    """The folds the embed and als jobs fit models for and the score job reads.

    ``score.early_target``: ``always`` adds the early fold, ``never`` does not, ``auto`` adds it
    where fewer users have a validation item than ``score.early_target_below``: on a few
    hundred users the grid's order is mostly noise and twice the users halve its variance; on
    tens of thousands a third fit of every model buys little (and above
    ``score.tune_max_users`` nothing: the tuning sample is capped).
    """
    setting = cfg.score.early_target
    base = (VALIDATION, TEST)
    if not cfg.score.tune_on_validation or setting == "never":
        return base
    if setting == "auto":
        users = held_out(interactions, VALIDATION).select(USER_COL).distinct().count()
        if users >= min(cfg.score.early_target_below, cfg.score.tune_max_users):
            log.info("early fold not fitted: %d validation users are enough to tune on", users)
            return base
        log.info("early fold fitted: %d validation users, the weights are picked on more", users)
    return (EARLY, *base)
