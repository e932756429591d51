"""Pure transforms of the embed stage: which texts to encode, and how text vectors become item
and user vectors. Only a fold's history is read (``folds.history``): a review held out from a
fold never shapes that fold's vectors."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from hybridrec.config.loader import Config
from hybridrec.constants import (
    EMBEDDING_COL,
    ITEM_COL,
    RATING_COL,
    TEXT_COL,
    TS_COL,
    USER_COL,
    VALIDATION,
)
from hybridrec.models import nearest
from hybridrec.models.cooc import NEIGHBOUR_COL
from hybridrec.models.folds import history

SECONDS_PER_DAY = 86400.0


def text_hash(text: Column) -> Column:
    return F.sha2(text, 256)


def review_weight(cfg: Config) -> Column:
    """The weight a history row gets in its user's profile: the rating scaled to (0, 1] (a
    missing rating counts as the scale's middle), halved every ``embed.recency_half_life_days``
    before the user's latest row when that is set. The user text vector and the user's topic
    interests (``hybridrec.models.interests``) both weigh by it."""
    low, high = cfg.ingest.min_rating, cfg.ingest.max_rating
    weight = F.coalesce(F.col(RATING_COL), F.lit((low + high) / 2)) / F.lit(high)
    half_life = cfg.embed.recency_half_life_days
    if half_life:
        from pyspark.sql import Window

        latest = F.max(TS_COL).over(Window.partitionBy(USER_COL))
        age_days = (F.unix_timestamp(latest) - F.unix_timestamp(TS_COL)) / SECONDS_PER_DAY
        weight = weight * F.pow(F.lit(0.5), age_days / F.lit(float(half_life)))
    return weight


def review_documents(interactions: DataFrame, cfg: Config, fold: str = VALIDATION) -> DataFrame:
    """The fold's history reviews with the weight each gets in its user's vector
    (``review_weight``)."""
    reviews = history(interactions, fold).where(
        F.col(TEXT_COL).isNotNull() & (F.trim(TEXT_COL) != "")
    )
    return reviews.select(
        USER_COL,
        ITEM_COL,
        F.col(TEXT_COL).alias("text"),
        text_hash(F.col(TEXT_COL)).alias("text_hash"),
        review_weight(cfg).alias("weight"),
    )


def item_documents(items: DataFrame) -> DataFrame:
    """An item's own text: title and description, when the catalog has them."""
    text = F.concat_ws(". ", F.col("title"), F.col("description"))
    return items.where(text != "").select(
        ITEM_COL, text.alias("text"), text_hash(text).alias("text_hash")
    )


def texts_to_encode(documents: DataFrame, cache: DataFrame | None, model_id: str) -> DataFrame:
    """Distinct texts with no vector for ``model_id`` in the cache yet."""
    distinct = documents.select("text_hash", "text").dropDuplicates(["text_hash"])
    if cache is None:
        return distinct
    known = cache.where(F.col("model_id") == model_id).select("text_hash")
    return distinct.join(known, "text_hash", "left_anti")


def encode_task_count(
    n_texts: int, texts_per_task: int, slots: int, partitions: int | None = None
) -> int:
    """Tasks that encode ``n_texts``: ``partitions`` when set, else the fewest whole waves of
    ``slots`` (Spark's default parallelism) tasks of at most ``texts_per_task`` texts each.

    Whole waves: 3 tasks on 2 slots leave a slot idle for a third of the time.
    """
    if partitions:
        return partitions
    slots = max(1, slots)
    return slots * max(1, -(-n_texts // (texts_per_task * slots)))


def encoder_udf(cfg: Config):
    """The text-encoding pandas UDF as ``embed.*`` configures it (the embed job and the stream)."""
    from udfs.embedding_udf import encode_texts_udf

    return encode_texts_udf(
        # None (the bundled model) is looked up by each executor: the driver's folder is its own.
        model_path=cfg.embed.model_path,
        device=cfg.embed.device,
        max_length=cfg.embed.max_length,
        batch_size=cfg.embed.batch_size,
        backend=cfg.embed.backend,
        onnx_cache_dir=cfg.embed.onnx_cache_dir,
    )


def encode_in_tasks(
    texts: DataFrame, encode: Callable, partitions: int, model_id: str
) -> DataFrame:
    """``text_hash, model_id, embedding`` of ``texts`` (text_hash, text) in ``partitions`` tasks,
    each sorted by length (``encode``: :func:`udfs.embedding_udf.encode_texts_udf`)."""
    return (
        texts.repartition(partitions)
        .sortWithinPartitions(F.length("text"))
        .select(
            "text_hash",
            F.lit(model_id).alias("model_id"),
            encode(F.col("text")).alias(EMBEDDING_COL),
        )
    )


def l2_normalised(df: DataFrame, column: str) -> DataFrame:
    """``df`` with its vector ``column`` scaled to unit length (null where it is all zeros).

    The norm is a column of its own, computed once per row: written inside the scaling lambda it
    would be summed again for every element (d^2 work per vector, seconds at 384 dimensions)."""
    squares = F.aggregate(column, F.lit(0.0), lambda acc, x: acc + x * x)
    norm = "_norm"
    return (
        df.withColumn(norm, F.sqrt(squares))
        .withColumn(
            column,
            F.when(F.col(norm) > 0, F.transform(column, lambda x: (x / F.col(norm)).cast("float"))),
        )
        .drop(norm)
    )


def weighted_mean_vectors(df: DataFrame, key: str, weight: str = "weight") -> DataFrame:
    """Per ``key``: the L2-normalised weighted mean of ``embedding`` and how many rows fed it."""
    mean = Summarizer.mean(array_to_vector(EMBEDDING_COL), F.col(weight))
    means = df.groupBy(key).agg(
        vector_to_array(mean, dtype="float32").alias(EMBEDDING_COL),
        F.count(F.lit(1)).alias("n_texts"),
    )
    return l2_normalised(means, EMBEDDING_COL)


def item_embeddings(
    reviews: DataFrame, item_docs: DataFrame, vectors: DataFrame, cfg: Config, model_id: str
) -> DataFrame:
    """Mean of the item's train review vectors and its own text (weighted ``item_meta_weight``)."""
    texts = reviews.select(ITEM_COL, "text_hash", F.lit(1.0).alias("weight")).unionByName(
        item_docs.select(ITEM_COL, "text_hash", F.lit(cfg.embed.item_meta_weight).alias("weight"))
    )
    with_vectors = texts.join(vectors, "text_hash")
    return (
        weighted_mean_vectors(with_vectors, ITEM_COL)
        .withColumnRenamed(ITEM_COL, "id")
        .withColumn("model_id", F.lit(model_id))
    )


def user_embeddings(
    reviews: DataFrame,
    vectors: DataFrame,
    interactions: DataFrame,
    items: DataFrame,
    model_id: str,
    fold: str = VALIDATION,
) -> DataFrame:
    """Weighted mean of the user's review vectors; a user who wrote no review in the fold's
    history gets the mean of the vectors of the items they had there (``n_texts`` = 0)."""
    from_reviews = weighted_mean_vectors(reviews.join(vectors, "text_hash"), USER_COL)
    train_items = history(interactions, fold).select(USER_COL, ITEM_COL).distinct()
    silent = train_items.join(from_reviews.select(USER_COL), USER_COL, "left_anti")
    fallback = (
        silent.join(items.select(F.col("id").alias(ITEM_COL), EMBEDDING_COL), ITEM_COL)
        .withColumn("weight", F.lit(1.0))
        .transform(lambda df: weighted_mean_vectors(df, USER_COL))
        .withColumn("n_texts", F.lit(0).cast("long"))
    )
    return (
        from_reviews.unionByName(fallback)
        .withColumnRenamed(USER_COL, "id")
        .withColumn("model_id", F.lit(model_id))
    )


def text_neighbours(item_vectors: DataFrame, neighbours: int, block_rows: int) -> DataFrame:
    """Per item (``id``, ``embedding``), its ``neighbours`` closest other items by text:
    item_id, neighbour_id, similarity (cosine).

    Blocked (``hybridrec.models.nearest``): each task compares one block of items with one block of
    at most ``block_rows`` items, so no item vectors are collected or broadcast and no task holds an
    items x items product; the work is still items x items, spread over the cluster.
    """
    return nearest.top_by_dot(
        item_vectors,
        item_vectors.withColumnRenamed("id", "neighbour"),
        ("id", "neighbour"),
        (EMBEDDING_COL, EMBEDDING_COL),
        "similarity",
        neighbours,
        block_rows,
        skip_same_id=True,
    ).select(F.col("id").alias(ITEM_COL), F.col("neighbour").alias(NEIGHBOUR_COL), "similarity")
