"""Fold a small micro-batch in the driver, at the speed of its arithmetic.

A running service's micro-batch holds a few dozen events. Run as Spark jobs, each step of the
fold (history, preferences, fold-in, text vectors, user frame, ranking) pays a job's fixed cost:
about 80 jobs, 8 to 14 s on 2 cores, whatever the batch's size. Up to ``stream.local_max_events``
valid events, with the catalog ranked in full, the touched users' rows are instead pulled once
from the serving run's tables (kept cached per serving run; what is pulled grows with the
micro-batch, not with the data) and the steps run here in pandas and numpy:

- preferences, review weights and user text vectors as ``cf.preferences``,
  ``embedding.review_documents`` and ``embedding.user_embeddings`` compute them;
- the ALS user step of ``models.foldin`` and the batch's ranking function
  (``scoring.recommend_block``, the body of the score job's UDF);
- new review texts encoded by the encoder that UDF uses (``udfs.encoder.get_encoder``).

``tests/integration/test_stream.py`` holds the lists this gives equal to the batch's for the same
history, as it does for the Spark path (``hybridrec.streaming.live``), which larger micro-batches
and candidate ranking keep.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config.loader import Config
from hybridrec.constants import (
    EMBEDDING_COL,
    EVENT_COL,
    FACTORS_COL,
    INTERACTIONS,
    ITEM_COL,
    ITEM_EMBEDDINGS,
    RATING_COL,
    TEXT_COL,
    TEXT_EMBEDDINGS,
    TS_COL,
    USER_COL,
)
from hybridrec.models import embedding
from hybridrec.models.embedding import SECONDS_PER_DAY
from hybridrec.models.foldin import fold_in
from hybridrec.ranking import learned, scoring
from hybridrec.streaming.events import EVENT_COLUMNS
from hybridrec.streaming.live import SERVED_FOLD, Serving
from udfs.encoder import get_encoder

log = logging.getLogger(__name__)

# recommendations_live: the recommendations table's columns, the newest event time folded in,
# the micro-batch and the serving run.
LIST_SCHEMA = T.StructType(
    [f for f in scoring.RECOMMENDATION_SCHEMA.fields if f.name != "model"]
    + [
        T.StructField("newest_event_ts", T.TimestampType()),
        T.StructField("batch_id", T.LongType()),
        T.StructField("serving_run_id", T.StringType()),
    ]
)
# An exact repeat: the same user, item, type, time, rating and text (nulls equal).
REPEAT_KEYS = [USER_COL, ITEM_COL, EVENT_COL, TS_COL, RATING_COL, TEXT_COL]


@dataclass
class LocalServing:
    """What the driver-side fold needs of one serving run, beyond ``Serving``."""

    interactions: DataFrame  # the run's interactions (EVENT_COLUMNS), each review with its vector
    texts: DataFrame | None  # text_hash, embedding, run_id: the serving encoder's vectors, cached
    item_vectors: pd.Series  # item_id -> the served fold's item text vector
    encoded: dict[str, np.ndarray] = field(default_factory=dict)  # encoded by this process

    def release(self) -> None:
        self.interactions.unpersist()
        self.texts.unpersist()


def load(serving: Serving) -> LocalServing:
    """Cache the serving run's interactions, each review with its vector (the run's own
    ``text_embeddings`` snapshot holds every text it encoded), and every vector of the serving
    encoder (for the texts of live events of earlier processes)."""
    warehouse = serving.warehouse
    texts = warehouse.read_all(TEXT_EMBEDDINGS)
    if texts is None:
        texts = warehouse.spark.createDataFrame(
            [], f"text_hash string, {EMBEDDING_COL} array<float>, run_id string"
        )
    texts = texts.where(F.col("model_id") == serving.model_id)
    texts = texts.select("text_hash", EMBEDDING_COL, "run_id").cache()
    own = texts.where(F.col("run_id") == F.lit(serving.run_id)).dropDuplicates(["text_hash"])
    interactions = (
        warehouse.read(INTERACTIONS)
        .select(*EVENT_COLUMNS)
        .withColumn("text_hash", embedding.text_hash(F.col(TEXT_COL)))
        .join(own.select("text_hash", EMBEDDING_COL), "text_hash", "left")
        .cache()
    )
    items = scoring.of_fold(warehouse.read(ITEM_EMBEDDINGS), SERVED_FOLD)
    item_frame = items.select("id", EMBEDDING_COL).toPandas()  # one row per item
    item_vectors = pd.Series(
        [np.asarray(v, dtype=np.float32) for v in item_frame[EMBEDDING_COL]],
        index=item_frame["id"].to_numpy(),
        dtype=object,
    )
    log.info(
        "stream: %d interactions and %d text vectors of run %s cached for small micro-batches",
        interactions.count(),
        texts.count(),
        serving.run_id,
    )
    return LocalServing(interactions, texts, item_vectors)


def preload_vectors(state: LocalServing, texts: pd.Series) -> None:
    """Look up, in one Spark job, the vectors of the review texts of live events folded in
    before this process (kept with what it encodes): their users' micro-batches then need
    none."""
    hashes = {hashlib.sha256(t.encode()).hexdigest() for t in texts.dropna()} - state.encoded.keys()
    if not hashes:
        return
    spark = state.texts.sparkSession
    wanted = spark.createDataFrame(pd.DataFrame({"text_hash": sorted(hashes)}))
    rows = state.texts.join(F.broadcast(wanted), "text_hash").dropDuplicates(["text_hash"])
    found = rows.select("text_hash", EMBEDDING_COL).toPandas()
    for text_hash, vector in zip(found["text_hash"], found[EMBEDDING_COL], strict=True):
        state.encoded[text_hash] = np.asarray(vector, dtype=np.float32)


def pull_history(state: LocalServing, users: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """The serving run's rows of ``users`` (EVENT_COLUMNS) and their reviews' vectors (one
    Spark job)."""
    rows = state.interactions.where(F.col(USER_COL).isin([str(u) for u in users])).toPandas()
    reviewed = rows[rows[EMBEDDING_COL].notna()]
    vectors = {
        h: np.asarray(v, dtype=np.float32)
        for h, v in zip(reviewed["text_hash"], reviewed[EMBEDDING_COL], strict=True)
    }
    return rows[EVENT_COLUMNS].astype({RATING_COL: "float64"}), vectors


def live_events_schema(events: T.StructType) -> T.StructType:
    """events_live's columns: the validated events', the micro-batch and the serving run."""
    extra = [
        T.StructField("batch_id", T.LongType()),
        T.StructField("serving_run_id", T.StringType()),
    ]
    return T.StructType([*events.fields, *extra])


def drop_repeats(events: pd.DataFrame, seen: pd.DataFrame) -> pd.DataFrame:
    """``events`` less exact repeats of a row of ``seen`` (as ``events.drop_seen``)."""
    if seen.empty or events.empty:
        return events
    keyed = events[REPEAT_KEYS].astype(object).where(events[REPEAT_KEYS].notna(), None)
    known = seen[REPEAT_KEYS].astype(object).where(seen[REPEAT_KEYS].notna(), None)
    known_keys = set(map(tuple, known.to_numpy().tolist()))
    repeat = np.fromiter(
        (tuple(row) in known_keys for row in keyed.to_numpy().tolist()), bool, len(events)
    )
    return events[~repeat]


def preferences(history: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """user_id, item_id, preference: ``cf.preferences`` of a history (every row counts)."""
    if cfg.als.implicit:
        weights = history[EVENT_COL].map(
            {event: float(w) for event, w in cfg.als.event_weights.items()}
        )
        strength = history[RATING_COL].fillna(weights.fillna(1.0).astype(float))
        frame = history.assign(preference=strength.astype(float))
        return frame.groupby([USER_COL, ITEM_COL], as_index=False)["preference"].sum()
    rated = history[history[RATING_COL].notna()].rename(columns={RATING_COL: "preference"})
    return rated.groupby([USER_COL, ITEM_COL], as_index=False)["preference"].mean()


def folded_factors(serving: Serving, prefs: pd.DataFrame) -> dict[str, np.ndarray]:
    """user_id -> ALS factors by fold-in (users with no preference on a factored item: none)."""
    rows = pd.Index(serving.factor_items).get_indexer(prefs[ITEM_COL])
    pairs = prefs[rows >= 0]
    if pairs.empty:
        return {}
    users, user_rows = np.unique(pairs[USER_COL].to_numpy(), return_inverse=True)
    factors, counted = fold_in(
        user_rows,
        rows[rows >= 0],
        pairs["preference"].to_numpy(),
        len(users),
        serving.factors,
        serving.als,
        item_gram=serving.factor_gram,
    )
    return {u: factors[n] for n, u in enumerate(users) if counted[n] > 0}


def review_documents(history: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """user_id, item_id, text, text_hash, weight: ``embedding.review_documents``."""
    texts = history[TEXT_COL]
    reviews = history[texts.notna() & (texts.fillna("").str.strip(" ") != "")].copy()
    low, high = cfg.ingest.min_rating, cfg.ingest.max_rating
    weight = reviews[RATING_COL].fillna((low + high) / 2) / high
    half_life = cfg.embed.recency_half_life_days
    if half_life and len(reviews):
        since_epoch = pd.to_datetime(reviews[TS_COL], utc=True) - pd.Timestamp(0, tz="UTC")
        seconds = since_epoch // pd.Timedelta(seconds=1)  # whole seconds, as unix_timestamp
        latest = seconds.groupby(reviews[USER_COL]).transform("max")
        weight = weight * np.power(0.5, (latest - seconds) / SECONDS_PER_DAY / float(half_life))
    return pd.DataFrame(
        {
            USER_COL: reviews[USER_COL].to_numpy(),
            ITEM_COL: reviews[ITEM_COL].to_numpy(),
            "text": reviews[TEXT_COL].to_numpy(),
            "text_hash": [hashlib.sha256(t.encode()).hexdigest() for t in reviews[TEXT_COL]],
            "weight": weight.to_numpy(dtype=np.float64),
        }
    )


def text_vectors(
    state: LocalServing,
    docs: pd.DataFrame,
    cfg: Config,
    exclude_run: str,
    known: dict[str, np.ndarray],
    fresh: set[str],
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Every doc's vector, and the texts encoded now (text_hash, embedding).

    ``known``: the vectors that came with the users' history; then what this process encoded;
    the texts of the micro-batch's own events (``fresh``) are encoded without a cache lookup (a
    lookup is a Spark job, about 0.3 s here; a short review encodes in milliseconds, to the same
    vector); any other live event's text is looked up in the serving encoder's vectors (less
    ``exclude_run``'s: a replayed micro-batch encodes its texts again), the rest encoded here."""
    hashes = set(docs["text_hash"])
    found = {h: known[h] for h in hashes & known.keys()}
    found |= {h: state.encoded[h] for h in (hashes - found.keys()) & state.encoded.keys()}
    wanted = hashes - found.keys() - fresh
    if wanted and state.texts is not None:  # None: no store to look in (the served model)
        rows = (
            state.texts.where(
                F.col("text_hash").isin(sorted(wanted)) & (F.col("run_id") != F.lit(exclude_run))
            )
            .select("text_hash", EMBEDDING_COL)
            .toPandas()
        )
        for text_hash, vector in zip(rows["text_hash"], rows[EMBEDDING_COL], strict=True):
            found.setdefault(text_hash, np.asarray(vector, dtype=np.float32))
    todo = docs[~docs["text_hash"].isin(list(found))].drop_duplicates("text_hash")
    new = pd.DataFrame({"text_hash": pd.Series([], dtype=object), EMBEDDING_COL: []})
    if len(todo):  # (an empty frame's text column may not be strings)
        todo = todo.assign(_length=todo["text"].str.len()).sort_values("_length")
        vectors = np.asarray(driver_encoder(cfg).encode(todo["text"].tolist()), dtype=np.float32)
        new = pd.DataFrame(
            {"text_hash": todo["text_hash"].to_numpy(), EMBEDDING_COL: list(vectors)}
        )
        for text_hash, vector in zip(new["text_hash"], vectors, strict=True):
            found[text_hash] = vector
            state.encoded[text_hash] = vector
    return found, new


def driver_encoder(cfg: Config):
    """The encoder the embedding UDF uses, loaded once in this process (the driver: a GPU,
    where there is one, belongs to the executors)."""
    return get_encoder(
        cfg.embed.model_path,
        "cpu",
        cfg.embed.max_length,
        cfg.embed.batch_size,
        cfg.embed.backend,
        cfg.embed.onnx_cache_dir,
    )


def _unit_mean(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """``embedding.weighted_mean_vectors`` of one user: the weighted mean as float32, scaled to
    unit length (None where it is all zeros)."""
    mean = ((weights[:, None] * vectors).sum(axis=0) / weights.sum()).astype(np.float32)
    norm = np.sqrt(np.square(mean, dtype=np.float32).astype(np.float64).sum())
    return (mean / norm).astype(np.float32) if norm > 0 else None


def user_vectors(
    state: LocalServing, history: pd.DataFrame, docs: pd.DataFrame, vectors: dict
) -> dict[str, np.ndarray | None]:
    """user_id -> text vector: the weighted mean of the user's review vectors; a user who wrote
    none, the mean of their items' vectors (``embedding.user_embeddings``)."""
    result: dict[str, np.ndarray | None] = {}
    docs = docs[docs["text_hash"].isin(list(vectors))]
    for user, rows in docs.groupby(USER_COL, sort=False):
        stacked = np.stack([vectors[h] for h in rows["text_hash"]]).astype(np.float64)
        result[user] = _unit_mean(stacked, rows["weight"].to_numpy(dtype=np.float64))
    silent = history[~history[USER_COL].isin(list(result))][[USER_COL, ITEM_COL]]
    silent = silent.drop_duplicates()
    silent = silent[silent[ITEM_COL].isin(state.item_vectors.index)]
    for user, rows in silent.groupby(USER_COL, sort=False):
        stacked = np.stack(state.item_vectors[rows[ITEM_COL]].to_list()).astype(np.float64)
        result[user] = _unit_mean(stacked, np.ones(len(rows)))
    return result


EPOCH = pd.Timestamp(0, tz="UTC")


def user_frame(
    serving: Serving,
    history: pd.DataFrame,
    factors: dict[str, np.ndarray],
    vectors: dict[str, np.ndarray | None],
) -> pd.DataFrame:
    """``scoring.build_user_frame``'s block: per user, the catalog indices of their items
    (newest first, ties by index, higher first), factors, text vector and newest event time."""
    last = history.groupby([USER_COL, ITEM_COL], as_index=False)[TS_COL].max()
    last["idx"] = pd.Index(serving.catalog.ids).get_indexer(last[ITEM_COL])
    last = last[last["idx"] >= 0].sort_values([USER_COL, TS_COL, "idx"], ascending=False)
    seen = {u: idx.to_numpy(np.int32) for u, idx in last.groupby(USER_COL, sort=False)["idx"]}
    users = sorted(set(seen) | set(factors) | {u for u, v in vectors.items() if v is not None})
    newest = pd.to_datetime(history.groupby(USER_COL)[TS_COL].max(), utc=True)
    return pd.DataFrame(
        {
            USER_COL: users,
            "seen": [seen.get(u) for u in users],
            FACTORS_COL: [factors.get(u) for u in users],
            EMBEDDING_COL: [vectors.get(u) for u in users],
            "last_ts": (newest - EPOCH).dt.total_seconds().reindex(users).to_numpy(float),
            "target": [None] * len(users),
        }
    )


def live_lists(
    serving: Serving,
    state: LocalServing,
    history: pd.DataFrame,
    cfg: Config,
    exclude_run: str,
    known: dict[str, np.ndarray] | None = None,
    fresh: set[str] = frozenset(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The recommendations table's rows (with ``newest_event_ts``) for every user of
    ``history`` (EVENT_COLUMNS, all of it the user's history), and the texts encoded for it
    (``known``, ``fresh``: see ``text_vectors``)."""
    docs = review_documents(history, cfg)
    vectors, new_texts = text_vectors(state, docs, cfg, exclude_run, known or {}, fresh)
    block = user_frame(
        serving,
        history,
        folded_factors(serving, preferences(history, cfg)),
        user_vectors(state, history, docs, vectors),
    )
    lists = rank_block(serving, block, cfg)
    newest = history.groupby(USER_COL)[TS_COL].max().rename("newest_event_ts")
    lists = lists.drop(columns="model").join(newest, on=USER_COL)
    return lists, new_texts


def rank_block(serving: Serving, block: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """One block of users ranked as the run serves them: by its learned ranker where it has
    one, by the linear hybrid otherwise (the score job's kernels, in this process)."""
    if serving.ranker is not None:
        settings = learned.kernel_settings(cfg, serving.recent_sharpness, serving.mode)
        return learned.rank_block(block, serving.ranker, serving.weights, settings, cfg)
    return scoring.recommend_block(
        block,
        serving.catalog,
        {"hybrid": serving.weights},
        cfg,
        serving.recent_sharpness,
        over_candidates=serving.mode.over_candidates,
    )
