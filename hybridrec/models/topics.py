"""Topics of the item text vectors, named by their most distinctive words, and each user's
interests in them.

- **Topics**: Spark MLlib k-means (or bisecting k-means) with cosine distance on the served
  fold's item vectors, each item counting once or, with ``topics.item_weight`` events, once
  plus once per history event (``weighted``); k set, or the one of ``topics.k_grid`` with the
  best silhouette on a sample (``fit``).
- **Labels**: class-based TF-IDF (Grootendorst 2022, BERTopic's c-TF-IDF). Each topic's texts
  (its items' reviews and own text) are one document: a word scores ``tf(t, c) / |c| * ln(1 + A /
  f(t))``, its share of the topic's words times how rare it is across topics (A the mean words
  per topic, f(t) the word's count over all topics). Spark ML's tokenizer, stop words and
  CountVectorizer (the vocabulary: ``topics.vocab_size`` words in at least
  ``topics.min_doc_freq`` texts) feed it; the IDF is the class-based one, over topics rather than
  texts, so it is Spark SQL over the (topic, word) counts (``topic_words``).
- **Coherence**: NPMI of each topic's top-word pairs over a sample of the same texts, next to
  random sets drawn from the same words (``coherence``).

Each user's interests in these topics: ``hybridrec.models.interests``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.ml.clustering import BisectingKMeans, KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import CountVectorizer, RegexTokenizer, StopWordsRemover
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config.loader import Config
from hybridrec.constants import (
    EMBEDDING_COL,
    FOLD_COL,
    ITEM_COL,
    TEST,
)
from hybridrec.models.embedding import item_documents, review_documents

log = logging.getLogger(__name__)

TOPIC_COL = "topic_id"
WEIGHT_COL = "weight"
# Letters and apostrophes make a token; tokens still holding an apostrophe after the stop words
# ("don't" is one, "it's" another) are dropped rather than split into fragments.
TOKEN_PATTERN = r"[^\p{L}']+"

TOPICS_SCHEMA = T.StructType(
    [
        T.StructField(TOPIC_COL, T.IntegerType(), False),
        T.StructField("label", T.StringType(), False),
        T.StructField("top_words", T.ArrayType(T.StringType()), False),
        T.StructField("word_scores", T.ArrayType(T.DoubleType()), False),
        T.StructField("items", T.LongType(), False),
        T.StructField("texts", T.LongType(), False),
        T.StructField("central_item_ids", T.ArrayType(T.StringType()), False),
        T.StructField("npmi", T.DoubleType(), True),
    ]
)


@dataclass(frozen=True)
class Fitted:
    """The clustering picked: its k, the unit-length centres (k, dim), the silhouette of each k
    tried (empty where k was set), and the Spark model that assigns topics."""

    k: int
    centres: np.ndarray
    silhouettes: dict[int, float]
    model: object


def served_item_vectors(item_embeddings: DataFrame, fold: str = TEST) -> DataFrame:
    """The item vectors the served lists use (the test fold: fitted on train and validation);
    another ``fold``'s for a check that must not see that fold's target."""
    return item_embeddings.where(F.col(FOLD_COL) == fold).select(
        F.col("id").alias(ITEM_COL), array_to_vector(EMBEDDING_COL).alias("features")
    )


def weighted(vectors: DataFrame, history: DataFrame, cfg: Config) -> DataFrame:
    """``vectors`` with each item's ``weight`` in the clustering (``topics.item_weight``):
    ``events``, once plus once per event on it in ``history``, so that the centres sit where
    users' attention is while an item nobody had still counts; ``uniform``, once each."""
    if cfg.topics.item_weight == "uniform":
        return vectors.withColumn(WEIGHT_COL, F.lit(1.0))
    counts = history.groupBy(ITEM_COL).agg(F.count("*").cast("double").alias("_events"))
    return (
        vectors.join(counts, ITEM_COL, "left")
        .withColumn(WEIGHT_COL, 1.0 + F.coalesce(F.col("_events"), F.lit(0.0)))
        .drop("_events")
    )


def _estimator(cfg: Config, k: int):
    t = cfg.topics
    if t.algorithm == "bisecting":
        return BisectingKMeans(
            k=k, seed=t.seed, distanceMeasure="cosine", weightCol=WEIGHT_COL
        )  # fmt: skip
    return KMeans(
        k=k, seed=t.seed, distanceMeasure="cosine", initMode="k-means||", weightCol=WEIGHT_COL
    )


class TooFewItems(ValueError):
    """Fewer item vectors than topics can be made of."""


def candidate_ks(cfg: Config, n_items: int) -> list[int]:
    """The k values to try: the set one, else the grid's below the item count (at least 2)."""
    if n_items < 3:
        raise TooFewItems(f"topics need at least 3 items with a text vector, got {n_items}")
    if cfg.topics.k is not None:
        return [min(cfg.topics.k, n_items - 1)]
    ks = sorted({k for k in cfg.topics.k_grid if k < n_items})
    return ks or [max(2, n_items // 2)]


def fit(vectors: DataFrame, cfg: Config) -> Fitted:
    """Cluster ``vectors`` (item_id, features and ``weighted``'s weight, 1 without), picking k
    by the silhouette (cosine, weighted the same) on a seeded sample of at most
    ``topics.silhouette_sample`` items where more than one k is tried."""
    if WEIGHT_COL not in vectors.columns:
        vectors = vectors.withColumn(WEIGHT_COL, F.lit(1.0))
    n_items = vectors.count()
    ks = candidate_ks(cfg, n_items)
    sample = vectors.sample(
        fraction=min(1.0, cfg.topics.silhouette_sample / n_items), seed=cfg.topics.seed
    ).cache()
    evaluator = ClusteringEvaluator(
        distanceMeasure="cosine", featuresCol="features", weightCol=WEIGHT_COL
    )
    models, silhouettes = {}, {}
    for k in ks:
        models[k] = _estimator(cfg, k).fit(vectors)
        if len(ks) > 1:
            silhouettes[k] = float(evaluator.evaluate(models[k].transform(sample)))
            log.info("topics: k=%d silhouette %.4f", k, silhouettes[k])
    sample.unpersist()
    k = max(silhouettes, key=silhouettes.get) if silhouettes else ks[0]
    model = models[k]
    centres = np.asarray(model.clusterCenters(), dtype=np.float64)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return Fitted(len(centres), centres, silhouettes, model)


def item_topics(vectors: DataFrame, fitted: Fitted) -> DataFrame:
    """item_id, topic_id and the cosine of the item's vector to its topic's centre."""
    spark = vectors.sparkSession
    centres = spark.createDataFrame(
        [(i, c.tolist()) for i, c in enumerate(fitted.centres)],
        f"{TOPIC_COL} int, centre array<double>",
    )
    assigned = fitted.model.transform(vectors).select(
        ITEM_COL,
        F.col("prediction").cast("int").alias(TOPIC_COL),
        F.col("features"),
    )
    dot = F.aggregate(
        F.zip_with(vector_to_array("features"), "centre", lambda x, y: x * y),
        F.lit(0.0),
        lambda acc, v: acc + v,
    )
    return assigned.join(F.broadcast(centres), TOPIC_COL).select(
        ITEM_COL, TOPIC_COL, dot.cast("float").alias("similarity")
    )


def topic_documents(
    interactions: DataFrame, items: DataFrame, assigned: DataFrame, cfg: Config
) -> DataFrame:
    """Each text a topic is named by (text_id, topic_id, text): the served fold's history
    reviews of its items (those its item vectors were made of) and the items' own title and
    description."""
    reviews = review_documents(interactions, cfg, TEST)
    texts = reviews.select(ITEM_COL, "text").unionByName(
        item_documents(items).select(ITEM_COL, "text")
    )
    return texts.join(assigned.select(ITEM_COL, TOPIC_COL), ITEM_COL).select(
        F.xxhash64(ITEM_COL, "text").alias("text_id"), TOPIC_COL, "text"
    )


def tokenised(documents: DataFrame, cfg: Config) -> DataFrame:
    """``documents`` with ``words``: lower-cased letter tokens of at least
    ``topics.min_word_length`` letters, English stop words removed."""
    tokens = RegexTokenizer(
        inputCol="text",
        outputCol="tokens",
        pattern=TOKEN_PATTERN,
        minTokenLength=cfg.topics.min_word_length,
    ).transform(documents)
    kept = StopWordsRemover(inputCol="tokens", outputCol="kept").transform(tokens)
    return kept.select(
        "text_id", TOPIC_COL, F.filter("kept", lambda w: ~w.contains("'")).alias("words")
    )


def vocabulary(words: DataFrame, cfg: Config) -> list[str]:
    """CountVectorizer's vocabulary: at most ``topics.vocab_size`` words, each in at least
    ``topics.min_doc_freq`` texts."""
    model = CountVectorizer(
        inputCol="words",
        outputCol="counts",
        vocabSize=cfg.topics.vocab_size,
        minDF=float(cfg.topics.min_doc_freq),
    ).fit(words)
    return list(model.vocabulary)


def topic_words(words: DataFrame, vocab: list[str], cfg: Config) -> pd.DataFrame:
    """Per topic its ``topics.top_words`` words by class-based TF-IDF, best first: topic_id,
    rank (1-based), word, score."""
    spark = words.sparkSession
    known = spark.createDataFrame([(w,) for w in vocab], "word string")
    counts = (
        words.select(TOPIC_COL, F.explode("words").alias("word"))
        .join(F.broadcast(known), "word")
        .groupBy(TOPIC_COL, "word")
        .agg(F.count(F.lit(1)).alias("tf"))
    )
    # Topic and word totals by aggregation (k and vocabulary rows): a window over everything
    # would move every count into one partition.
    topic_size = counts.groupBy(TOPIC_COL).agg(F.sum("tf").alias("topic_size"))
    word_total = counts.groupBy("word").agg(F.sum("tf").alias("word_total"))
    mean_size = topic_size.agg(F.avg("topic_size")).first()[0] or 0.0
    scored = (
        counts.join(topic_size, TOPIC_COL)
        .join(word_total, "word")
        .select(
            TOPIC_COL,
            "word",
            (
                F.col("tf")
                / F.col("topic_size")
                * F.log(1.0 + F.lit(float(mean_size)) / F.col("word_total"))
            ).alias("score"),
        )
    )
    per_topic = Window.partitionBy(TOPIC_COL)
    ranked = scored.withColumn(
        "rank", F.row_number().over(per_topic.orderBy(F.desc("score"), "word"))
    ).where(F.col("rank") <= cfg.topics.top_words)
    # k x top_words rows, bounded by settings.
    return ranked.toPandas().sort_values([TOPIC_COL, "rank"]).reset_index(drop=True)


def labels(top: pd.DataFrame, k: int, label_words: int) -> dict[int, str]:
    """Each topic's label: its first ``label_words`` words; a topic with no word in the
    vocabulary is named by its number."""
    named = {
        int(t): ", ".join(g.sort_values("rank")["word"].head(label_words))
        for t, g in top.groupby(TOPIC_COL)
    }
    return {t: named.get(t) or f"topic {t}" for t in range(k)}


def npmi_of(words: list[str], doc_freq: dict, pair_freq: dict, n_docs: int) -> float:
    """Mean NPMI over the pairs of ``words`` (Bouma 2009): log(p(a,b) / (p(a) p(b))) /
    -log p(a,b), -1 for a pair never seen together; nan with fewer than two words."""
    values = []
    for i, a in enumerate(words):
        for b in words[i + 1 :]:
            joint = pair_freq.get((a, b) if a < b else (b, a), 0) / n_docs
            pa, pb = doc_freq.get(a, 0) / n_docs, doc_freq.get(b, 0) / n_docs
            if joint <= 0 or pa <= 0 or pb <= 0:
                values.append(-1.0)
            elif joint >= 1.0:
                values.append(1.0)
            else:
                values.append(float(np.log(joint / (pa * pb)) / -np.log(joint)))
    return float(np.mean(values)) if values else float("nan")


@dataclass(frozen=True)
class Coherence:
    """Mean NPMI per topic, of each random word set, and the texts counted."""

    per_topic: dict[int, float]
    random_sets: list[float]
    texts: int

    @property
    def mean(self) -> float:
        return float(np.nanmean(list(self.per_topic.values()))) if self.per_topic else float("nan")

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_sets)) if self.random_sets else float("nan")


def coherence(words: DataFrame, top: pd.DataFrame, cfg: Config) -> Coherence:
    """NPMI of each topic's top words over a sample of the texts (at most
    ``topics.coherence_docs``), and of ``topics.coherence_random_sets`` random sets of as many
    words drawn from all topics' top words: the same words, so the baseline has their
    frequencies, only not their grouping."""
    per_topic_words = {int(t): list(g["word"]) for t, g in top.groupby(TOPIC_COL)}
    pool = sorted({w for ws in per_topic_words.values() for w in ws})
    size = cfg.topics.top_words
    rng = np.random.default_rng(cfg.topics.seed)
    random_sets = (
        [
            list(rng.choice(pool, size=size, replace=False))
            for _ in range(cfg.topics.coherence_random_sets)
        ]
        if len(pool) >= size
        else []
    )
    n_texts = words.count()
    sample = words.sample(
        fraction=min(1.0, cfg.topics.coherence_docs / max(n_texts, 1)), seed=cfg.topics.seed
    )
    spark = words.sparkSession
    wanted = spark.createDataFrame([(w,) for w in pool] or [("",)], "word string")
    present = (
        sample.select("text_id", F.explode(F.array_distinct("words")).alias("word"))
        .join(F.broadcast(wanted), "word")
        .cache()
    )
    n_docs = sample.count()
    doc_freq = {r.word: r.n for r in present.groupBy("word").agg(F.count("*").alias("n")).collect()}
    pairs = (
        present.alias("a")
        .join(present.alias("b"), "text_id")
        .where(F.col("a.word") < F.col("b.word"))
        .groupBy(F.col("a.word").alias("a"), F.col("b.word").alias("b"))
        .agg(F.count("*").alias("n"))
    )
    # At most len(pool)^2 / 2 pairs, bounded by the settings.
    pair_freq = {(r.a, r.b): r.n for r in pairs.collect()}
    present.unpersist()
    if not n_docs:
        return Coherence({}, [], 0)
    return Coherence(
        {t: npmi_of(ws, doc_freq, pair_freq, n_docs) for t, ws in per_topic_words.items()},
        [npmi_of(ws, doc_freq, pair_freq, n_docs) for ws in random_sets],
        n_docs,
    )


def topics_frame(
    assigned: DataFrame,
    documents: DataFrame,
    top: pd.DataFrame,
    fitted: Fitted,
    scores: Coherence,
    cfg: Config,
) -> pd.DataFrame:
    """The ``topics`` rows (k of them): label, top words and scores, size in items and texts,
    the items nearest the centre, coherence."""
    nearest = Window.partitionBy(TOPIC_COL).orderBy(F.desc("similarity"), ITEM_COL)
    sizes = (
        assigned.withColumn("place", F.row_number().over(nearest))
        .groupBy(TOPIC_COL)
        .agg(
            F.count("*").alias("items"),
            F.sort_array(
                F.collect_list(
                    F.when(
                        F.col("place") <= cfg.topics.central_items,
                        F.struct("place", ITEM_COL),
                    )
                )
            ).alias("central"),
        )
        .toPandas()
        .set_index(TOPIC_COL)
    )
    texts = documents.groupBy(TOPIC_COL).count().toPandas().set_index(TOPIC_COL)["count"]
    named = labels(top, fitted.k, cfg.topics.label_words)
    rows = []
    for t in range(fitted.k):
        words = top[top[TOPIC_COL] == t]
        rows.append(
            {
                TOPIC_COL: t,
                "label": named[t],
                "top_words": list(words["word"]),
                "word_scores": [float(s) for s in words["score"]],
                "items": int(sizes["items"].get(t, 0)),
                "texts": int(texts.get(t, 0)),
                "central_item_ids": [c[ITEM_COL] for c in sizes["central"].get(t, [])],
                "npmi": scores.per_topic.get(t),
            }
        )
    return pd.DataFrame(rows)
