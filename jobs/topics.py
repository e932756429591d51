"""topics: item text vectors + review text -> topics, item_topics, user_interests.

    spark-submit jobs/topics.py --conf conf/local.yaml [--set topics.k=12]
    python -m jobs.topics --conf conf/local.yaml

Runs after embed (it clusters the served fold's item vectors) and needs nothing from als, so the
Airflow DAG runs it beside als. The topics are named by their most distinctive words, never by
hand, and judged by NPMI coherence against random sets of the same words; each user's interests
are the topics' shares of their served history (``hybridrec.models.topics``). How often the
next item falls in those interests is measured by evaluate, the stage that reads test.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import mlflow
import pandas as pd
from pyspark.sql import SparkSession

from hybridrec.config.loader import Config
from hybridrec.constants import (
    INTERACTIONS,
    ITEM_EMBEDDINGS,
    ITEM_TOPICS,
    ITEMS,
    TEST,
    TOPICS,
    USER_INTERESTS,
)
from hybridrec.models import interests, topics
from hybridrec.models.folds import history
from hybridrec.ops.runner import job_main
from hybridrec.store.small_files import SmallFrame
from hybridrec.store.tables import Warehouse

NAME = "topics"
log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    if not cfg.topics.enabled:
        log.info("topics.enabled is false: no topics, item_topics or user_interests this run")
        return {"topics": 0.0}
    warehouse = Warehouse.from_config(spark, cfg, run_id)
    interactions = warehouse.read(INTERACTIONS)
    items = warehouse.read(ITEMS)
    vectors = topics.weighted(
        topics.served_item_vectors(warehouse.read(ITEM_EMBEDDINGS)),
        history(interactions, TEST),
        cfg,
    ).cache()

    started = time.perf_counter()
    try:
        fitted = topics.fit(vectors, cfg)
    except topics.TooFewItems as exc:
        log.warning("no topics this run: %s", exc)
        vectors.unpersist()
        return {"topics": 0.0}
    if fitted.silhouettes:
        mlflow.log_text(
            pd.Series(fitted.silhouettes, name="silhouette")
            .rename_axis("k")
            .reset_index()
            .to_csv(index=False),
            "topics_silhouette.csv",
        )
    log.info(
        "topics: k=%d (%s) on %s item vectors in %.1fs",
        fitted.k,
        "set by topics.k" if not fitted.silhouettes else "best silhouette of topics.k_grid",
        cfg.topics.algorithm,
        time.perf_counter() - started,
    )
    n_items = warehouse.write(topics.item_topics(vectors, fitted), ITEM_TOPICS)
    vectors.unpersist()
    assigned = warehouse.read(ITEM_TOPICS)

    started = time.perf_counter()
    words = topics.tokenised(
        topics.topic_documents(interactions, items, assigned, cfg), cfg
    ).cache()
    vocab = topics.vocabulary(words, cfg)
    top = topics.topic_words(words, vocab, cfg)
    scores = topics.coherence(words, top, cfg)
    frame = topics.topics_frame(assigned, words, top, fitted, scores, cfg)
    words.unpersist()
    warehouse.write(SmallFrame(frame, topics.TOPICS_SCHEMA), TOPICS)
    log.info(
        "topics named from %d texts (vocabulary %d words) in %.1fs; NPMI %.3f against %.3f for "
        "random sets of the same words:\n%s",
        scores.texts,
        len(vocab),
        time.perf_counter() - started,
        scores.mean,
        scores.random_mean,
        frame[["topic_id", "items", "label", "npmi"]].to_string(index=False),
    )
    mlflow.log_text(frame.to_csv(index=False), "topics.csv")

    started = time.perf_counter()
    named = dict(zip(frame["topic_id"], frame["label"], strict=True))
    n_users = warehouse.write(
        interests.user_interests(history(interactions, TEST), assigned, named, cfg),
        USER_INTERESTS,
    )
    log.info("interests of %d users in %.1fs", n_users, time.perf_counter() - started)

    results = {
        "topics": float(fitted.k),
        "item_topics": float(n_items),
        "user_interests": float(n_users),
        "vocabulary": float(len(vocab)),
        "coherence_npmi": scores.mean,
        "coherence_npmi_random": scores.random_mean,
        "coherence_texts": float(scores.texts),
        **({f"silhouette_k{k}": s for k, s in fitted.silhouettes.items()}),
    }
    if cfg.topics.sentiment == "vader":
        results |= interests.sentiment_agreement(interactions, cfg)
    return {k: v for k, v in results.items() if not (isinstance(v, float) and math.isnan(v))}


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
