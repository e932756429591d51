"""embed: review and item text -> text_embeddings (cache), item_embeddings, user_embeddings.

    spark-submit jobs/embed.py --conf conf/local.yaml [--set embed.model_path=/models/bert-base]
    python -m jobs.embed --conf conf/local.yaml

Texts are deduplicated by hash, and only texts with no vector for this model in the cache are
encoded, so a re-run on grown data encodes just the new texts.
"""

from __future__ import annotations

import logging
import sys
import time
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybridrec.config.loader import Config
from hybridrec.constants import (
    EMBEDDING_COL,
    FOLD_COL,
    INTERACTIONS,
    ITEM_COL,
    ITEM_EMBEDDINGS,
    ITEM_TEXT_NEIGHBOURS,
    ITEMS,
    TEST,
    TEXT_EMBEDDINGS,
    USER_EMBEDDINGS,
)
from hybridrec.models import embedding
from hybridrec.models.folds import model_folds
from hybridrec.ops import progress
from hybridrec.ops.runner import job_main
from hybridrec.ranking import scoring
from hybridrec.store.tables import Warehouse
from udfs.encoder import resolve_model

NAME = "embed"
log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    warehouse = Warehouse.from_config(spark, cfg, run_id)
    # Checks the model folder here, at start; executors load it themselves.
    _, model_id = resolve_model(
        cfg.embed.model_path, cfg.embed.model_id, cfg.embed.max_length, cfg.embed.backend
    )
    interactions = warehouse.read(INTERACTIONS)
    items = warehouse.read(ITEMS)
    fitted = model_folds(interactions, cfg)
    reviews = {fold: embedding.review_documents(interactions, cfg, fold).cache() for fold in fitted}
    item_docs = embedding.item_documents(items).cache()
    # The test fold's history holds every review any fold uses: encode each text once.
    documents = (
        reviews[TEST].select("text_hash", "text").unionByName(item_docs.select("text_hash", "text"))
    )

    # Vectors of every kept run's snapshot (each is whole): encode only texts none of them has.
    cache = warehouse.read_all(TEXT_EMBEDDINGS)
    if cache is not None:
        cache = cache.where(F.col("model_id") == model_id).dropDuplicates(["text_hash"])
    todo = embedding.texts_to_encode(documents, cache, model_id).cache()
    n_todo = todo.count()
    # Tasks of at most embed.texts_per_task texts: progress can be seen (and a lost task
    # redone) in steps, and reused Python workers keep the encoder loaded across tasks.
    partitions = embedding.encode_task_count(
        n_todo,
        cfg.embed.texts_per_task,
        spark.sparkContext.defaultParallelism,
        cfg.embed.partitions,
    )
    encode = embedding.encoder_udf(cfg)
    log.info("encoding %d new texts with %s in %d tasks", n_todo, model_id, partitions)
    started = time.perf_counter()
    encoded = embedding.encode_in_tasks(todo, encode, partitions, model_id)
    # This run's snapshot holds every vector the run uses, cached ones too, so that retention
    # can drop older runs without losing a vector a kept run needs.
    if cache is not None:
        reused = cache.join(documents.select("text_hash").distinct(), "text_hash", "left_semi")
        encoded = encoded.unionByName(reused.select("text_hash", "model_id", EMBEDDING_COL))
    with progress.working_on("encoding", n_todo, "texts"):
        n_vectors = warehouse.write(encoded, TEXT_EMBEDDINGS)
    encode_seconds = time.perf_counter() - started
    log.info(
        "encoded %d texts in %.1fs (%.1f texts/s); %d vectors in this run's snapshot",
        n_todo,
        encode_seconds,
        n_todo / encode_seconds if encode_seconds else 0.0,
        n_vectors,
    )

    vectors = (
        warehouse.read(TEXT_EMBEDDINGS)
        .where(F.col("model_id") == model_id)
        .select("text_hash", EMBEDDING_COL)
        .cache()  # joined per fold, for items and users
    )
    item_vectors = reduce(
        DataFrame.unionByName,
        [
            embedding.item_embeddings(reviews[fold], item_docs, vectors, cfg, model_id).withColumn(
                FOLD_COL, F.lit(fold)
            )
            for fold in fitted
        ],
    )
    n_items = warehouse.write(item_vectors, ITEM_EMBEDDINGS, partition_by=[FOLD_COL])
    item_vectors = warehouse.read(ITEM_EMBEDDINGS)
    started = time.perf_counter()
    # Neighbours among the candidates only: metadata-only items outside the scoring catalog
    # would take places in the top list and then be dropped when the catalog is built.
    candidates = scoring.catalog_items(interactions, items, cfg).withColumnRenamed(ITEM_COL, "id")
    closest = reduce(
        DataFrame.unionByName,
        [
            embedding.text_neighbours(
                item_vectors.where(F.col(FOLD_COL) == fold).join(candidates, "id"),
                cfg.embed.text_neighbours,
                cfg.score.candidates.item_block_rows,
            ).withColumn(FOLD_COL, F.lit(fold))
            for fold in fitted
        ],
    )
    user_vectors = reduce(
        DataFrame.unionByName,
        [
            embedding.user_embeddings(
                reviews[fold],
                vectors,
                interactions,
                item_vectors.where(F.col(FOLD_COL) == fold).drop(FOLD_COL),
                model_id,
                fold,
            ).withColumn(FOLD_COL, F.lit(fold))
            for fold in fitted
        ],
    )
    # Side by side: each of the two is a few small jobs, on a small run mostly waiting.
    written = warehouse.write_together(
        {ITEM_TEXT_NEIGHBOURS: closest, USER_EMBEDDINGS: user_vectors},
        run_id=run_id,
        partition_by=[FOLD_COL],
    )
    n_pairs, n_users = written[ITEM_TEXT_NEIGHBOURS], written[USER_EMBEDDINGS]
    log.info(
        "%d text neighbour pairs (up to %d per item, every fold) and %d user vectors in %.1fs",
        n_pairs,
        cfg.embed.text_neighbours,
        n_users,
        time.perf_counter() - started,
    )
    return {
        "texts_encoded": n_todo,
        "texts_per_second": n_todo / encode_seconds if encode_seconds else 0.0,
        "encode_seconds": encode_seconds,
        "item_embeddings": n_items,
        "user_embeddings": n_users,
        "text_neighbour_pairs": n_pairs,
    }


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
