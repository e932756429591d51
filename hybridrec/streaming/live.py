"""Fold a micro-batch's events into the touched users and rank them as the batch does.

The serving run is the newest complete batch run. A touched user's history is their rows of the
serving run's interactions (every split: all they did) plus every live event folded in since,
this micro-batch's included. From it, the batch's own functions give the ALS preferences
(``cf.preferences``), then the user's ALS factors by fold-in against the serving run's item
factors (``models.foldin``, ALS's own user step), and the user's text vector
(``embedding.user_embeddings``, reviews new to the cache encoded by the same UDF). The users are
then ranked by ``rank.rank_users`` with the serving run's fusion weights, re-rank strength and
recent sharpness: the one ranking function of the batch. A user the serving run never saw is
ranked from their first event the same way (text, history parts and popularity).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config.loader import Config
from hybridrec.constants import (
    ALS_ITEM_FACTORS,
    ALS_PARAMS,
    EMBEDDING_COL,
    EVENTS_LIVE,
    FACTORS_COL,
    FUSION_WEIGHTS,
    INTERACTIONS,
    ITEM_COL,
    ITEM_EMBEDDINGS,
    ITEM_TOPICS,
    SPLIT_COL,
    TEST,
    TEXT_EMBEDDINGS,
    TOPICS,
    TS_COL,
    USER_COL,
    USER_INTERESTS,
)
from hybridrec.models import cf, embedding, interests
from hybridrec.models.foldin import AlsSettings, fold_in, gram
from hybridrec.models.folds import history as fold_history
from hybridrec.ranking import catalogs, learned, rank, scoring
from hybridrec.store.tables import MissingTableError, Warehouse
from hybridrec.streaming.events import EVENT_COLUMNS
from udfs import ranking_kernel
from udfs.encoder import resolve_model
from udfs.rerank import DEBIAS, debiased

log = logging.getLogger(__name__)

# text_embeddings: a review text's vector from one encoder.
VECTOR_SCHEMA = T.StructType(
    [
        T.StructField("text_hash", T.StringType()),
        T.StructField("model_id", T.StringType()),
        T.StructField(EMBEDDING_COL, T.ArrayType(T.FloatType())),
    ]
)
# Served lists come from the test fold: the models refitted on train and validation.
SERVED_FOLD = TEST


@dataclass
class Serving:
    """What ranking against one batch run needs, loaded once per run."""

    run_id: str
    warehouse: Warehouse  # its reads default to the serving run's snapshots
    mode: rank.RankingMode
    catalog: ranking_kernel.ItemCatalog | None  # full ranking only
    weights: dict[str, float]
    recent_sharpness: float
    als: AlsSettings
    factor_items: np.ndarray  # item ids, one per row of factors
    factors: np.ndarray
    factor_gram: np.ndarray
    model_id: str
    # The learned ranker where the run serves it (``learned_ranker.served``), else None.
    ranker: learned.RankerInputs | None = None
    # The run's topics where it has interests (the topics stage), else None.
    topics: TopicInputs | None = None


@dataclass(frozen=True)
class TopicInputs:
    """What updating a user's interests needs from the serving run: each item's topic, the
    topics' labels and their popularity (the order of ties), as the batch counted it."""

    assigned: DataFrame  # item_id, topic_id; cached, item-sized
    named: dict[int, str]
    popularity: DataFrame  # topic_id, popularity; k rows


def load_serving(
    spark: SparkSession, cfg: Config, run_id: str, warehouse: Warehouse, *, topics: bool = False
) -> Serving:
    """The serving run ``run_id``'s weights, ALS settings and item factors (catalog-sized);
    ``topics``: and its topics, for the stream's interests (``served_topics``)."""
    served = Warehouse(spark, warehouse.root, warehouse.database, run_id, catalog_writes=False)
    if not served.exists(ALS_PARAMS):
        raise MissingTableError(
            f"the serving run {run_id} has no als_params snapshot (written by the als stage "
            "since the stream exists): run the batch pipeline once more, then start the stream"
        )
    params = scoring.of_fold(served.read(ALS_PARAMS), SERVED_FOLD).first()
    picked = served.read(FUSION_WEIGHTS).where(F.col("model") == "hybrid").first()
    weights = {part: float(picked[part] or 0.0) for part in ranking_kernel.PARTS}
    items = (
        scoring.of_fold(served.read(ALS_ITEM_FACTORS), SERVED_FOLD)
        .orderBy(ITEM_COL)
        .toPandas()  # one row per item: grows with the catalog, never with users
    )
    factors = np.stack(items[FACTORS_COL].to_numpy()).astype(np.float64)
    mode = rank.ranking_mode(served, cfg)
    _, model_id = resolve_model(
        cfg.embed.model_path, cfg.embed.model_id, cfg.embed.max_length, cfg.embed.backend
    )
    serving = Serving(
        run_id=run_id,
        warehouse=served,
        mode=mode,
        catalog=catalogs.load_catalog(served, cfg, SERVED_FOLD) if mode.catalog_broadcast else None,
        weights=debiased(weights, float(picked[DEBIAS] or 0.0)),
        recent_sharpness=float(picked["recent_sharpness"]),
        als=AlsSettings(
            reg_param=float(params["reg_param"]),
            alpha=float(params["alpha"]),
            implicit=bool(params["implicit"]),
            nonnegative=bool(params["nonnegative"]),
        ),
        factor_items=items[ITEM_COL].to_numpy().astype(str),
        factors=factors,
        factor_gram=gram(factors),
        model_id=model_id,
        ranker=served_ranker(served, cfg, mode),
        topics=served_topics(served, cfg) if topics else None,
    )
    log.info(
        "stream serves against run %s: %s; ALS rank %d (%s, reg %g, alpha %g); weights %s",
        run_id,
        mode.describe(),
        factors.shape[1],
        "implicit" if serving.als.implicit else "explicit",
        serving.als.reg_param,
        serving.als.alpha,
        {k: round(v, 3) for k, v in weights.items()},
    )
    return serving


def user_history(serving: Serving, live_events: DataFrame, touched: DataFrame) -> DataFrame:
    """The touched users' whole history: their serving-run interactions and live events, all
    marked history of the served fold."""
    past = serving.warehouse.read(INTERACTIONS).select(*EVENT_COLUMNS)
    rows = past.unionByName(live_events.select(*EVENT_COLUMNS))
    return rows.join(touched, USER_COL, "left_semi").withColumn(SPLIT_COL, F.lit("train"))


def folded_factors(serving: Serving, history: DataFrame, cfg: Config) -> DataFrame:
    """user_id, factors: each user's ALS factors by fold-in of their preferences."""
    spark = history.sparkSession
    prefs = cf.preferences(history, cfg, SERVED_FOLD)
    index = scoring.catalog_index(spark, serving.factor_items)
    pairs = prefs.join(index, ITEM_COL)  # an item without factors has nothing to fold in
    shared = spark.sparkContext.broadcast((serving.factors, serving.factor_gram, serving.als))

    def solve(block: pd.DataFrame) -> pd.DataFrame:
        item_factors, item_gram, settings = shared.value
        users, rows = np.unique(block[USER_COL].to_numpy(), return_inverse=True)
        factors, counted = fold_in(
            rows,
            block["idx"].to_numpy(),
            block["preference"].to_numpy(),
            len(users),
            item_factors,
            settings,
            item_gram=item_gram,
        )
        kept = counted > 0
        return pd.DataFrame({USER_COL: users[kept], FACTORS_COL: list(factors[kept])})

    n_users = pairs.select(USER_COL).distinct().count()
    blocks = max(1, math.ceil(n_users / cfg.stream.fold_block_users))
    return pairs.groupBy(F.pmod(F.xxhash64(USER_COL), F.lit(blocks)).alias("_block")).applyInPandas(
        solve, f"{USER_COL} string, {FACTORS_COL} array<float>"
    )


def text_cache(serving: Serving, snapshot: str) -> DataFrame | None:
    """text_hash, model_id, embedding of every snapshot of ``text_embeddings`` for the serving
    encoder, less micro-batch ``snapshot``'s own: a replay encodes its texts again rather than
    find them in the snapshot it is about to replace."""
    cache = serving.warehouse.read_all(TEXT_EMBEDDINGS)
    if cache is None:
        return None
    return cache.where(
        (F.col("model_id") == serving.model_id) & (F.col("run_id") != F.lit(snapshot))
    ).select("text_hash", "model_id", EMBEDDING_COL)


def new_text_vectors(
    serving: Serving, docs: DataFrame, cache: DataFrame | None, cfg: Config
) -> DataFrame | None:
    """text_hash, model_id, embedding of the review texts ``cache`` has no vector for (encoded
    by the batch's UDF); None when there is none, so that no encoder starts for nothing."""
    todo = embedding.texts_to_encode(docs, cache, serving.model_id).cache()
    if todo.isEmpty():
        todo.unpersist()
        return None
    partitions = docs.sparkSession.sparkContext.defaultParallelism
    return embedding.encode_in_tasks(todo, embedding.encoder_udf(cfg), partitions, serving.model_id)


def user_vectors(
    serving: Serving,
    history: DataFrame,
    docs: DataFrame,
    new_vectors: DataFrame,
    cache: DataFrame | None,
) -> DataFrame:
    """user_id, embedding: each user's text vector, as the embed job makes it."""
    vectors = new_vectors.select("text_hash", "model_id", EMBEDDING_COL)
    if cache is not None:
        vectors = vectors.unionByName(cache)
    vectors = (
        vectors.where(F.col("model_id") == serving.model_id)
        .join(docs.select("text_hash").distinct(), "text_hash", "left_semi")
        .dropDuplicates(["text_hash"])
        .select("text_hash", EMBEDDING_COL)
    )
    items = scoring.of_fold(serving.warehouse.read(ITEM_EMBEDDINGS), SERVED_FOLD)
    return embedding.user_embeddings(
        docs, vectors, history, items, serving.model_id, SERVED_FOLD
    ).select(F.col("id").alias(USER_COL), EMBEDDING_COL)


def has_topics(served: Warehouse, cfg: Config) -> bool:
    """Whether the run wrote users' interests (the topics stage ran) and topics are on."""
    return bool(cfg.topics.enabled and served.exists(USER_INTERESTS))


def served_topics(served: Warehouse, cfg: Config) -> TopicInputs | None:
    """The run's topics, where it has them (``has_topics``)."""
    if not has_topics(served, cfg):
        return None
    spark = served.spark
    assigned = served.read(ITEM_TOPICS).select(ITEM_COL, "topic_id").cache()
    named = {int(r.topic_id): r.label for r in served.read(TOPICS).collect()}  # k rows
    history = fold_history(served.read(INTERACTIONS), SERVED_FOLD)
    counted = interests.topic_popularity(history, assigned).toPandas()  # k rows
    popularity = spark.createDataFrame(counted, "topic_id int, popularity long")
    return TopicInputs(assigned, named, popularity)


def live_interests(serving: Serving, history: DataFrame, cfg: Config) -> DataFrame | None:
    """The touched users' interests from their whole ``history`` (serving run and live
    events), against the serving run's topics; None where the run has none. An item newer than
    the run has no topic yet: it counts from the next batch run on."""
    if serving.topics is None:
        return None
    topics = serving.topics
    return interests.user_interests(
        history, topics.assigned, topics.named, cfg, popularity=topics.popularity
    )


def served_ranker(served: Warehouse, cfg: Config, mode: rank.RankingMode):
    """The run's learned ranker with the served fold's inputs, where the score job served it."""
    row = learned.served_ranker_row(served) if mode.catalog_broadcast else None
    if row is None:
        return None
    log.info("the run serves its learned ranker: %s", row["note"])
    return learned.fold_inputs(served, cfg, SERVED_FOLD, bytes(row["model"]))


def live_lists(
    serving: Serving,
    history: DataFrame,
    new_vectors: DataFrame,
    cache: DataFrame | None,
    cfg: Config,
) -> DataFrame:
    """The recommendations table's rows for every user of ``history``, with the newest event
    time folded into each list (``cache``: ``text_cache``; ``new_vectors``: what it lacked)."""
    docs = embedding.review_documents(history, cfg, SERVED_FOLD)
    users = rank.UserState(
        interactions=history,
        factors=folded_factors(serving, history, cfg),
        vectors=user_vectors(serving, history, docs, new_vectors, cache),
    )
    if serving.ranker is not None:
        recs = learned.rank_users(
            serving.warehouse,
            cfg,
            SERVED_FOLD,
            serving.ranker,
            serving.weights,
            sharpness=serving.recent_sharpness,
            mode=serving.mode,
            users=users,
        )
    else:
        recs = rank.rank_users(
            serving.warehouse,
            cfg,
            SERVED_FOLD,
            {"hybrid": serving.weights},
            recent_sharpness=serving.recent_sharpness,
            mode=serving.mode,
            users=users,
            catalog=serving.catalog,
        )
    recs = recs.drop("model")
    newest = history.groupBy(USER_COL).agg(F.max(TS_COL).alias("newest_event_ts"))
    return recs.join(newest, USER_COL, "left")


def earlier_events(warehouse: Warehouse, before: str) -> DataFrame | None:
    """Events folded in by earlier micro-batches (snapshots sorting before ``before``), against
    any serving run: the repeats to drop; those against the serving run are users' history."""
    table = warehouse.read_all(EVENTS_LIVE)
    if table is None:
        return None
    return table.where(F.col("run_id") < F.lit(before))
