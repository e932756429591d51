"""The learned ranker's training: its rows, the fit and the gate (``learned`` ranks with it).

The linear hybrid (weights picked on validation) proposes each user's ``ranker.candidates`` best
items; ``udfs.learned_ranker`` describes each (user, candidate). On the tuning folds (validation,
and the early fold where the score job pooled it) every sampled user whose held-out item is
among its candidates gives one query group, label 1 on that item. xgboost's ``SparkXGBRanker``
(LambdaMART, NDCG; boosting from the linear score, its base margin) fits once per depth of
``ranker.max_depth_grid``, stopping when the NDCG@K of ``ranker.holdout_share`` of the users
held back (a hash of the user id) stops rising; the depth with the best held-back NDCG is kept.

The gate judges the ranker forward in time where the early fold is fitted: trained on the early
fold, judged on the validation fold, as the served ranker is trained on validation and ranks
test. A random split of one fold's users judges a ranker on the same moment it learned from,
and a ranker can win there and lose on the next fold: on Amazon All_Beauty it gained +0.019
NDCG on held-back validation users (z = 4.9) and lost 0.034 on test, and trained on the early
fold it gains nothing on validation. Without an early fold (many users), the held-back users
of the validation fold judge it. The judged gain is, on every judged user (those whose item is
not a candidate too), the ranker's NDCG@K less the served linear hybrid's (its re-rank
included), paired by user; the ranker is served where the lower end of the
``ranker.confidence`` interval of that gain is above zero, the rule the ``next`` share follows;
otherwise the linear hybrid is, and the note says why. A forward-judged ranker that is served is
then refitted on both folds with the depth and rounds picked (as ALS is refitted on train and
validation). Nothing here reads the test fold.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import reduce
from statistics import NormalDist

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from hybridrec.config.loader import Config
from hybridrec.constants import EARLY, USER_COL, VALIDATION
from hybridrec.ops import progress
from hybridrec.ranking import blocks, scoring
from hybridrec.ranking.learned import RankerInputs, fold_inputs, kernel_settings
from hybridrec.ranking.rank import RankingMode
from hybridrec.store.tables import Warehouse
from udfs import learned_ranker

log = logging.getLogger(__name__)

FOLD = "fold"
HELD_BACK = "held_back"
QID = "qid"
LABEL = "label"
# One float column per feature, named as the model's features: xgboost.spark takes a list of
# numeric columns, so the training rows hold no per-row array objects.
FEATURE_COLUMNS = list(learned_ranker.FEATURES)
SCORE = "score"
BASE_MARGIN = "base_margin"
TRAIN_SCHEMA = T.StructType(
    [
        T.StructField(USER_COL, T.StringType()),
        T.StructField(LABEL, T.FloatType()),
        *[T.StructField(name, T.FloatType()) for name in FEATURE_COLUMNS],
        T.StructField(BASE_MARGIN, T.FloatType()),
    ]
)
_HOLDOUT_SALT = "ranker-holdout"
_QID_BUCKETS = 2**31 - 1


@dataclass
class Fitted:
    """The outcome of ``fit_and_gate``: the model (UBJSON bytes), whether it is served and why,
    and what was measured on the way."""

    model: bytes | None
    served: bool
    note: str
    max_depth: int = 0
    rounds: int = 0
    held_back_ndcg: float = float("nan")
    linear_ndcg: float = float("nan")
    gain: float = float("nan")
    gain_se: float = float("nan")
    gain_low: float = float("nan")
    train_users: int = 0
    held_back_users: int = 0
    seconds: float = 0.0
    importance: dict[str, float] = field(default_factory=dict)
    curve: pd.DataFrame = field(default_factory=pd.DataFrame)

    def row(self) -> dict:
        """The learned_ranker table's row."""
        return {
            "served": self.served,
            "note": self.note,
            "max_depth": self.max_depth,
            "rounds": self.rounds,
            "held_back_ndcg": self.held_back_ndcg,
            "linear_ndcg": self.linear_ndcg,
            "ndcg_gain": self.gain,
            "ndcg_gain_se": self.gain_se,
            "ndcg_gain_low": self.gain_low,
            "train_users": self.train_users,
            "held_back_users": self.held_back_users,
            "features": list(learned_ranker.FEATURES),
            "model": self.model,
        }


LEARNED_RANKER_SCHEMA = T.StructType(
    [
        T.StructField("served", T.BooleanType()),
        T.StructField("note", T.StringType()),
        T.StructField("max_depth", T.IntegerType()),
        T.StructField("rounds", T.IntegerType()),
        T.StructField("held_back_ndcg", T.DoubleType()),
        T.StructField("linear_ndcg", T.DoubleType()),
        T.StructField("ndcg_gain", T.DoubleType()),
        T.StructField("ndcg_gain_se", T.DoubleType()),
        T.StructField("ndcg_gain_low", T.DoubleType()),
        T.StructField("train_users", T.IntegerType()),
        T.StructField("held_back_users", T.IntegerType()),
        T.StructField("features", T.ArrayType(T.StringType())),
        T.StructField("model", T.BinaryType()),
    ]
)


def training_rows(
    users: DataFrame, inputs: RankerInputs, weights: Mapping[str, float], settings: dict, cfg
) -> DataFrame:
    """user_id, label, the feature columns, base_margin: every candidate of each user whose
    held-out item (``target``) is among its candidates, materialised."""
    weights = dict(weights)

    def rows(block: pd.DataFrame, shared: RankerInputs) -> pd.DataFrame:
        block = block[block["target"].notna()].reset_index(drop=True)
        candidates = learned_ranker.candidate_set(
            block, shared.catalog, shared.context, weights, **settings
        )
        labels = candidates.labels(block["target"].to_numpy(np.int64))
        keep = (labels.sum(axis=1) > 0)[:, None] & candidates.valid
        user, slot = np.nonzero(keep)
        features = candidates.features[user, slot]
        return pd.DataFrame(
            {
                USER_COL: candidates.user_ids[user],
                LABEL: labels[user, slot],
                **{name: features[:, i] for i, name in enumerate(FEATURE_COLUMNS)},
                BASE_MARGIN: learned_ranker.base_margin(features),
            }
        )

    # Materialised, so that the catalog's broadcast is freed before the next fold's is made.
    return blocks.map_with_broadcast(users, inputs, cfg.score.user_block_rows, TRAIN_SCHEMA, rows)


def held_back(share: float):
    """Whether the row's user is held back (the same users in every fold)."""
    return F.pmod(F.xxhash64(F.lit(_HOLDOUT_SALT), USER_COL), F.lit(10_000)) < F.lit(
        int(share * 10_000)
    )


def fit_and_gate(
    warehouse: Warehouse,
    cfg: Config,
    mode: RankingMode,
    folds: tuple[str, ...],
    weights: Mapping[str, float],
    sharpness: float,
) -> Fitted:
    """Train on ``folds``' candidates, pick depth and rounds on held-back users, judge the
    ranker against the linear hybrid and decide whether it is served (the module doc).
    ``weights``: the served linear hybrid's, its ``debias`` strength included (the gate
    compares with the list actually served)."""
    started = time.perf_counter()
    if not mode.catalog_broadcast:
        return Fitted(
            None,
            False,
            "linear hybrid served: the learned ranker reads the catalog's arrays in every task, "
            f"and this run ranks a {mode.describe()}",
        )
    rows, linear_ranks = training_data(warehouse, cfg, mode, folds, weights, sharpness)
    # Forward where the early fold is fitted: trained on the early fold, judged on the
    # validation fold, as the served ranker is trained on validation and ranks test.
    forward = EARLY in folds and VALIDATION in folds
    if forward:
        fit_rows = rows.where(F.col(FOLD) == EARLY)
        judged = F.col(FOLD) == VALIDATION
    else:
        fit_rows, judged = rows, F.col(HELD_BACK)
    judge_rows, judge_linear = rows.where(judged), linear_ranks.where(judged)
    counts = fit_rows.groupBy(HELD_BACK).agg(F.countDistinct(FOLD, USER_COL).alias("n")).collect()
    n = {bool(r[HELD_BACK]): int(r["n"]) for r in counts}
    train_users, stop_users = n.get(False, 0), n.get(True, 0)
    judged_users = judge_linear.count()
    where = "the validation fold, trained on the early fold" if forward else "held-back users"
    log.info(
        "learned ranker: %d training queries, %d held back to stop early; judged on %d users of %s",
        train_users,
        stop_users,
        judged_users,
        where,
    )
    if train_users < 10 or stop_users < 10 or judged_users < 10:
        return Fitted(
            None,
            False,
            f"linear hybrid served: too few users to train and judge a ranker ({train_users} "
            f"training, {stop_users} held-back queries, {judged_users} judged)",
            train_users=train_users,
            held_back_users=judged_users,
            seconds=time.perf_counter() - started,
        )
    best, curve = None, []
    for depth, (booster, score, rounds) in zip(
        cfg.ranker.max_depth_grid, _fit_depths(fit_rows, cfg), strict=True
    ):
        curve.append({"max_depth": depth, "rounds": rounds, "held_back_ndcg_xgb": score})
        log.info(
            "ranker depth %d: %d rounds, held-back NDCG@%d %.4f", depth, rounds, cfg.score.k, score
        )
        if best is None or score > best[1]:
            best = (booster, score, rounds, depth)
    booster, _, rounds, depth = best
    gain = _paired_gain(judge_rows, judge_linear, _saved(booster), cfg)
    served, low, verdict = decide(gain, cfg.ranker.confidence, cfg.score.k, cfg.ranker.serve)
    verdict += f"; judged on {where}"
    if forward and served:
        # What is served learns from the newest fold too, as ALS is refitted on train and
        # validation once its settings are picked.
        with progress.working_on(f"learned ranker (refit: depth {depth}, {rounds} rounds)"):
            booster = _refit(rows, cfg, depth, rounds)
        verdict += f", then refitted on both folds ({depth} deep, {rounds} rounds)"
    log.info("%s", verdict)
    importance = booster.get_score(importance_type="total_gain")
    return Fitted(
        model=_saved(booster),
        served=served,
        note=verdict,
        max_depth=depth,
        rounds=rounds,
        held_back_ndcg=gain["ranker"],
        linear_ndcg=gain["linear"],
        gain=gain["gain"],
        gain_se=gain["se"],
        gain_low=low,
        train_users=train_users,
        held_back_users=judged_users,
        seconds=time.perf_counter() - started,
        importance={name: float(importance.get(name, 0.0)) for name in learned_ranker.FEATURES},
        curve=pd.DataFrame(curve),
    )


def _saved(booster) -> bytes:
    """The booster as UBJSON bytes, its features named."""
    booster.feature_names = list(learned_ranker.FEATURES)
    return bytes(booster.save_raw("ubj"))


def training_data(
    warehouse: Warehouse,
    cfg: Config,
    mode: RankingMode,
    folds: tuple[str, ...],
    weights: Mapping[str, float],
    sharpness: float,
) -> tuple[DataFrame, DataFrame]:
    """``folds``' training rows (fold, user_id, label, the feature columns, base_margin, qid,
    held_back), and the served linear hybrid's target rank of every sampled user (fold,
    user_id, target_rank, held_back), both materialised."""
    spark = warehouse.spark
    settings = kernel_settings(cfg, sharpness, mode)
    frames, linear = [], []
    for fold in folds:
        inputs = fold_inputs(warehouse, cfg, fold)
        users = scoring.load_user_frame(spark, warehouse, inputs.catalog, fold, with_target=True)
        users = scoring.tuning_sample(users, cfg.ranker.train_max_users).cache()
        try:
            frames.append(
                training_rows(users, inputs, weights, settings, cfg).withColumn(FOLD, F.lit(fold))
            )
            ranks = scoring.tune_ranks(
                users,
                inputs.catalog,
                [dict(weights)],
                cfg,
                recent_sharpness=sharpness,
                over_candidates=mode.over_candidates,
            )
            linear.append(
                ranks.select(USER_COL, "target_rank")
                .withColumn(FOLD, F.lit(fold))
                .localCheckpoint(eager=True)
            )
        finally:
            users.unpersist()
    held = held_back(cfg.ranker.holdout_share)
    rows = (
        reduce(DataFrame.unionByName, frames)
        .withColumn(QID, F.pmod(F.xxhash64(FOLD, USER_COL), F.lit(_QID_BUCKETS)).cast("long"))
        .withColumn(HELD_BACK, held)
        .localCheckpoint(eager=True)
    )
    linear_ranks = reduce(DataFrame.unionByName, linear).withColumn(HELD_BACK, held)
    return rows, linear_ranks


def decide(
    gain: Mapping[str, float], confidence: float, k: int, serve: str
) -> tuple[bool, float, str]:
    """Whether the ranker is served, the lower end of the gain's interval, and the note that
    says why: ``serve`` auto serves it where that lower end is above zero; always serves it
    whatever the held-back users say (an A/B arm, a test), and says so."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    low = gain["gain"] - z * gain["se"]
    figures = (
        f"NDCG@{k} {gain['ranker']:.4f} against the linear hybrid's "
        f"{gain['linear']:.4f}, gain {gain['gain']:+.4f} ± {gain['se']:.4f} (low end of its "
        f"{100 * confidence:g}% interval {low:+.4f})"
    )
    if serve == "always":
        return True, low, f"ranker served: ranker.serve is always; {figures}"
    if low > 0:
        return True, low, f"ranker served: {figures} > 0"
    return False, low, f"linear hybrid served: {figures} <= 0"


def _estimator(spark: SparkSession, cfg: Config, depth: int, **settings):
    from xgboost.spark import SparkXGBRanker

    return SparkXGBRanker(
        features_col=FEATURE_COLUMNS,
        label_col=LABEL,
        qid_col=QID,
        base_margin_col=BASE_MARGIN,
        objective="rank:ndcg",
        eval_metric=f"ndcg@{cfg.score.k}",
        max_depth=depth,
        learning_rate=cfg.ranker.learning_rate,
        min_child_weight=cfg.ranker.min_child_weight,
        subsample=cfg.ranker.subsample,
        colsample_bytree=cfg.ranker.colsample_bytree,
        reg_lambda=cfg.ranker.reg_lambda,
        num_workers=cfg.ranker.workers,
        tree_method="hist",
        random_state=0,
        callbacks=[learned_ranker.BoostingClock(blocks.boosting_clock(spark))],
        **settings,
    )


def _fit(rows: DataFrame, cfg: Config, depth: int):
    """One SparkXGBRanker fit at ``depth`` on the rows not held back, stopping early on those
    held back; the booster cut at its best round, the held-back NDCG@K xgboost measured there,
    and the number of rounds."""
    estimator = _estimator(
        rows.sparkSession,
        cfg,
        depth,
        validation_indicator_col=HELD_BACK,
        n_estimators=cfg.ranker.max_rounds,
        early_stopping_rounds=cfg.ranker.early_stopping_rounds,
    )
    booster = estimator.fit(rows).get_booster()
    best = int(booster.best_iteration) if booster.attr("best_iteration") is not None else None
    rounds = (best + 1) if best is not None else booster.num_boosted_rounds()
    score = float(booster.attr("best_score") or "nan")
    return booster[:rounds], score, rounds


def _fit_depths(rows: DataFrame, cfg: Config) -> list[tuple]:
    """``_fit`` at every ``ranker.max_depth_grid`` depth, in grid order. Each fit is one Spark
    job of ``ranker.workers`` tasks, a thread each: as many run side by side as the cluster has
    task slots for, so a one-worker fit does not leave the other cores idle (on the built-in
    sample, two depths took 16 s one after the other on 2 cores)."""
    depths = list(cfg.ranker.max_depth_grid)
    slots = rows.sparkSession.sparkContext.defaultParallelism
    side_by_side = max(1, min(len(depths), slots // cfg.ranker.workers))
    with progress.working_on(f"learned ranker (depths {', '.join(map(str, depths))})"):
        if side_by_side == 1:
            return [_fit(rows, cfg, depth) for depth in depths]
        with ThreadPoolExecutor(side_by_side, thread_name_prefix="ranker-fit") as pool:
            return list(pool.map(lambda depth: _fit(rows, cfg, depth), depths))


def _refit(rows: DataFrame, cfg: Config, depth: int, rounds: int):
    """A SparkXGBRanker fit on every row (none held back) for ``rounds`` rounds."""
    return _estimator(rows.sparkSession, cfg, depth, n_estimators=rounds).fit(rows).get_booster()


def _paired_gain(
    held_rows: DataFrame, linear_ranks: DataFrame, model: bytes, cfg: Config
) -> dict[str, float]:
    """The ranker's and the linear hybrid's NDCG@K over every held-back user, and the mean and
    standard error of their difference per user."""
    k = cfg.score.k
    shared = held_rows.sparkSession.sparkContext.broadcast(model)

    def scored(batches):
        booster = learned_ranker.booster(shared.value, nthread=1)
        for batch in batches:
            x = batch[FEATURE_COLUMNS].to_numpy(np.float32) if len(batch) else None
            batch = batch.drop(columns=FEATURE_COLUMNS)
            batch[SCORE] = learned_ranker.predict(booster, x) if x is not None else []
            yield batch

    schema = f"{FOLD} string, {USER_COL} string, {LABEL} float, {SCORE} float"
    predictions = held_rows.select(FOLD, USER_COL, LABEL, *FEATURE_COLUMNS).mapInPandas(
        scored, schema
    )
    target = F.max(F.when(F.col(LABEL) > 0, F.col(SCORE))).over(Window.partitionBy(FOLD, USER_COL))
    ranker_ranks = (
        predictions.withColumn("_target", target)
        .groupBy(FOLD, USER_COL)
        .agg(
            (
                F.sum(
                    F.when((F.col(LABEL) == 0) & (F.col(SCORE) >= F.col("_target")), 1).otherwise(0)
                )
                + 1
            ).alias("ranker_rank")
        )
    )

    def ndcg(rank):
        return F.when((rank >= 1) & (rank <= k), 1.0 / F.log2(rank + 1)).otherwise(0.0)

    paired = (
        linear_ranks.join(ranker_ranks, [FOLD, USER_COL], "left")
        .select(
            ndcg(F.coalesce(F.col("ranker_rank"), F.lit(0))).alias("r"),
            ndcg(F.col("target_rank")).alias("l"),
        )
        .withColumn("g", F.col("r") - F.col("l"))
        .agg(
            F.avg("r").alias("ranker"),
            F.avg("l").alias("linear"),
            F.avg("g").alias("gain"),
            F.stddev_samp("g").alias("sd"),
            F.count(F.lit(1)).alias("n"),
        )
        .first()
    )
    shared.unpersist()
    n = int(paired["n"] or 0)
    sd = float(paired["sd"] or 0.0)
    return {
        "ranker": float(paired["ranker"] or 0.0),
        "linear": float(paired["linear"] or 0.0),
        "gain": float(paired["gain"] or 0.0),
        "se": sd / math.sqrt(n) if n else float("inf"),
    }


def spark_row(spark: SparkSession, fitted: Fitted) -> DataFrame:
    return spark.createDataFrame([fitted.row()], LEARNED_RANKER_SCHEMA)
