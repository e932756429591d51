"""The data dictionary: what each table and column means, with units and ranges.

One source for three readers: the catalog (``DESCRIBE TABLE hybridrec.<table>`` shows these
comments), the README's table list (``python -m hybridrec.store.catalog`` prints it; a test keeps
the README equal to it) and the analyst views built on the tables:

- ``<table>_latest``: the table's rows of the newest complete run (``runs.status = 'complete'``,
  latest ``started_at``), for every table partitioned by run.
- ``recommendations_explained``, ``recommendations_current`` and ``user_interests_current``:
  ``VIEW_DESCRIPTIONS`` below; their SQL, one definition for both engines, is
  ``hybridrec.views``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pyspark.sql import types as T

from hybridrec.constants import (
    ALS_ITEM_FACTORS,
    ALS_PARAMS,
    ALS_USER_FACTORS,
    BASELINE_RECOMMENDATIONS,
    COMPARISONS,
    DEBIAS_CURVE,
    EVENTS_LIVE,
    FUSION_WEIGHTS,
    INTERACTIONS,
    ITEM_EMBEDDINGS,
    ITEM_NEIGHBOURS,
    ITEM_TEXT_NEIGHBOURS,
    ITEM_TOPICS,
    ITEM_TRANSITIONS,
    ITEMS,
    LEARNED_RANKER,
    METRICS,
    RECOMMENDATIONS,
    RECOMMENDATIONS_LIVE,
    REJECTS,
    STREAM_PROGRESS,
    TEXT_EMBEDDINGS,
    TOPICS,
    USER_EMBEDDINGS,
    USER_INTERESTS,
    USER_INTERESTS_LIVE,
)
from hybridrec.views import CURRENT, EXPLAINED, INTERESTS_CURRENT, LATEST_SUFFIX, RUNS  # noqa: F401


@dataclass(frozen=True)
class TableDoc:
    """A table's description and its columns' meanings. Each column's must fit the Hive
    metastore's 256 characters (``COLUMN_MAX``): Spark registers a table with a longer one in a
    format only Spark reads, after logging the metastore's failure."""

    description: str
    columns: dict[str, str]


COLUMN_MAX = 256
RUN_ID = "the run that wrote this row's snapshot (a row of runs); partition column"
FOLD = (
    "validation: fitted on train, judged on validation (tuning); early (few validation users "
    "only): train less each user's newest train item, judged on it (tuning, with validation); "
    "test: refitted on train + validation, judged on test, served; partition column"
)
# score.normalisation scales each part per user over their candidate items: zscore (default;
# standard deviations from the user's mean, 0 = no preference), minmax (0-1) or rank (0-1).
SCORE_PARTS = {
    "cf_score": "ALS collaborative part, normalised per user (score.normalisation: z-score by "
    "default, 0 = the user's average candidate)",
    "cooc_score": "item co-occurrence part, normalised like cf_score",
    "text_score": "review/item text similarity part (whole history), normalised like cf_score",
    "recent_score": "text similarity to the user's recent items, normalised like cf_score",
    "pop_score": "item popularity part, normalised like cf_score",
    "next_score": "what other users had next after the user's newest items, normalised like "
    "cf_score",
}
RECOMMENDATION_COLUMNS = {
    "user_id": "user the list is for",
    "rank": "position in the user's list, 1 = best (1..score.k)",
    "item_id": "recommended item, never one the user already had",
    "score": "fused score: the weighted sum of the parts below (higher is better)",
    **SCORE_PARTS,
    "reason": "why, in words: the part that added most (e.g. 'similar to <item>', 'popular')",
    "reason_item_id": "the user's history item the reason names; null when it names none",
    "run_id": RUN_ID,
}
EMBEDDING_COLUMNS = {
    "id": "user_id or item_id the vector belongs to",
    "embedding": "mean of its texts' encoder vectors, unit length (array<float>, the model's dim)",
    "n_texts": "texts averaged into the vector (count, >= 1)",
    "model_id": "encoder that made it: model name or path @ max sequence length",
    "run_id": RUN_ID,
    "fold": FOLD,
}

TABLES: dict[str, TableDoc] = {
    RUNS: TableDoc(
        "One row per pipeline run: status, timing, the settings and inputs that decided results",
        {
            "status": "running, incomplete (some stages done), complete (all five) or failed",
            "attempt": "how many times this run id was started (1 = first try)",
            "started_at": "first attempt's start (UTC timestamp)",
            "attempt_started_at": "this attempt's start (UTC timestamp)",
            "ended_at": "when the last attempt ended (UTC timestamp); null while running",
            "stages_done": "stages that succeeded, comma-separated (ingest ... evaluate)",
            "config_hash": "hash of the result settings: equal hashes, same configuration",
            "config": "the settings that decide results (JSON, secrets masked as ***)",
            "inputs": "source paths read (JSON, credentials masked)",
            "input_rows": "rows read per source (JSON)",
            "code_version": "hybridrec version + git commit, e.g. 0.1.0+3c1d44d",
            "host": "host the last attempt ran on",
            "pid": "process id of the last attempt",
            "message": "why it failed (first line of the error); null otherwise",
            "run_id": "the run id (partition column)",
        },
    ),
    INTERACTIONS: TableDoc(
        "Validated user-item events, behaviour joined with reviews, split leave-last-out per user",
        {
            "user_id": "user (pseudonymised if privacy.pseudonymise_user_ids)",
            "item_id": "item",
            "rating": "explicit rating in the source's scale (e.g. 1-5); null for implicit events",
            "event_type": "rating, click, purchase or review",
            "event_ts": "when it happened (UTC timestamp)",
            "review_text": "the user's review of the item, if any",
            "origin": "behaviour, review or behaviour+review (found in both sources)",
            "split": "train, validation (user's second-newest item) or test (newest item)",
            "run_id": RUN_ID,
        },
    ),
    ITEMS: TableDoc(
        "The item catalog with the text the encoder reads",
        {
            "item_id": "item",
            "title": "item title from metadata; null without metadata",
            "description": "item description from metadata; null without metadata",
            "has_metadata": "true when the source had a metadata record for the item",
            "run_id": RUN_ID,
        },
    ),
    REJECTS: TableDoc(
        "Input records that failed validation, as read, with the reason",
        {
            "source": "where the record came from, e.g. behaviour:<path> or reviews:sample",
            "raw": "the record as read (JSON or the text line); the user id pseudonymised if set",
            "reason": "why it was rejected, e.g. missing user_id, invalid event_ts, duplicate row",
            "run_id": RUN_ID + "; stream-<stream>-<batch> for a streamed micro-batch's rows",
        },
    ),
    TEXT_EMBEDDINGS: TableDoc(
        "Encoder vectors by text hash: the cache shared across runs (each run's snapshot holds "
        "every vector it used)",
        {
            "text_hash": "SHA-256 (hex) of the encoded text",
            "model_id": "encoder: model name or path @ max sequence length",
            "embedding": "the text's vector, unit length (array<float>, the model's dim)",
            "run_id": RUN_ID,
        },
    ),
    ITEM_EMBEDDINGS: TableDoc(
        "One text vector per item: its title, description and reviews (train side of the fold)",
        EMBEDDING_COLUMNS,
    ),
    USER_EMBEDDINGS: TableDoc(
        "One text vector per user: the reviews they wrote (train side of the fold)",
        EMBEDDING_COLUMNS,
    ),
    ALS_USER_FACTORS: TableDoc(
        "Spark ALS user factors of the fold's chosen model",
        {
            "user_id": "user",
            "factors": "latent factors (array<float>, als rank entries)",
            "run_id": RUN_ID,
            "fold": FOLD,
        },
    ),
    ALS_PARAMS: TableDoc(
        "The ALS settings each fold's model was fitted with (what a fold-in needs)",
        {
            "rank": "latent factors per user and item",
            "reg_param": "L2 strength, scaled per user and item by their preference count",
            "alpha": "implicit confidence: 1 + alpha * preference",
            "implicit": "true: implicit-feedback ALS; false: explicit ratings",
            "nonnegative": "true: factors constrained to >= 0",
            "run_id": RUN_ID,
            "fold": FOLD,
        },
    ),
    ALS_ITEM_FACTORS: TableDoc(
        "Spark ALS item factors of the fold's chosen model",
        {
            "item_id": "item",
            "factors": "latent factors (array<float>, als rank entries)",
            "run_id": RUN_ID,
            "fold": FOLD,
        },
    ),
    ITEM_NEIGHBOURS: TableDoc(
        "Item co-occurrence neighbours: items often had by the same users",
        {
            "item_id": "item",
            "neighbour_id": "an item often had together with it",
            "similarity": "time-weighted co-occurrence cosine (0-1, higher is closer)",
            "run_id": RUN_ID,
            "fold": FOLD,
        },
    ),
    ITEM_TEXT_NEIGHBOURS: TableDoc(
        "Each item's nearest items by text",
        {
            "item_id": "item",
            "neighbour_id": "one of its embed.text_neighbours closest items by text",
            "similarity": "cosine similarity of the item vectors (-1 to 1)",
            "run_id": RUN_ID,
            "fold": FOLD,
        },
    ),
    ITEM_TRANSITIONS: TableDoc(
        "What came next: the items users had soon after each item",
        {
            "item_id": "item",
            "neighbour_id": "an item often had within transitions.window items after it",
            "similarity": "place-weighted count of (item, then neighbour) over sqrt(item's "
            "outgoing x neighbour's incoming count), each at least 1 (higher is more often next)",
            "run_id": RUN_ID,
            "fold": FOLD,
        },
    ),
    RECOMMENDATIONS: TableDoc(
        "Served top-K per user from the hybrid (test fold models), with the parts of each score: "
        "the learned ranker's order of the linear hybrid's candidates where learned_ranker says "
        "it is served (score: the ranker's), else the linear hybrid's",
        RECOMMENDATION_COLUMNS,
    ),
    BASELINE_RECOMMENDATIONS: TableDoc(
        "Top-K per user from each baseline, for evaluation",
        {
            "model": "als, cooc, text, popularity, ease or item_knn; hybrid_linear: the linear "
            "hybrid where the learned ranker is served; debias=<b>: the linear hybrid at "
            "popularity de-biasing strength b (the debias_curve's lists)",
            **RECOMMENDATION_COLUMNS,
        },
    ),
    FUSION_WEIGHTS: TableDoc(
        "The fusion weights picked on validation",
        {
            "model": "hybrid or text (the text baseline's mix of its two parts)",
            "cf": "weight of cf_score (0-1; the six weights sum to 1)",
            "cooc": "weight of cooc_score (0-1)",
            "text": "weight of text_score (0-1)",
            "recent": "weight of recent_score (0-1)",
            "pop": "weight of pop_score (0-1)",
            "next": "weight of next_score (0-1; mixed into the grid's pick on validation)",
            "recent_sharpness": "exponent sharpening the recent text part (1 = plain cosine)",
            "debias": "popularity de-biasing strength of the re-rank: the last score.rerank_slots "
            "places go to the best remaining items by fused score - debias x normalised "
            "popularity (0 = none; picked on validation within score.max_ndcg_loss)",
            "validation_ndcg": "NDCG@K on validation with these weights (0-1)",
            "validation_hr": "hit rate@K on validation with these weights (0-1)",
            "run_id": RUN_ID,
        },
    ),
    METRICS: TableDoc(
        "Every model's metrics at K on the test split",
        {
            "model": "hybrid, hybrid_linear (where the learned ranker is served), als, cooc, "
            "text, popularity, ease or item_knn",
            "metric": "ndcg, hr, precision, recall, map (0-1, mean per test user); coverage "
            "(catalog share), diversity (mean 1 - cosine in a list, 0-2), novelty (mean -log2 "
            "popularity, bits); reason_<kind>: share of the hybrid's top-K explained by cf, "
            "cooc, text, next, pop, none",
            "k": "list length the metric is cut at",
            "value": "the metric's value",
            "segment": "all test users, sparse_users (fewest history items) or tail_items "
            "(test items among the least popular); beyond-accuracy metrics only for all",
            "run_id": RUN_ID,
        },
    ),
    TOPICS: TableDoc(
        "Topics of the item text vectors (k-means, cosine), named by their most distinctive words",
        {
            "topic_id": "the topic (0 to k-1)",
            "label": "its first topics.label_words top words: how a reader and a reason name it",
            "top_words": "its topics.top_words most distinctive words (c-TF-IDF), best first",
            "word_scores": "each top word's class-based TF-IDF score, in the same order",
            "items": "items assigned to it",
            "texts": "review and item texts of those items its words were counted in",
            "central_item_ids": "the topics.central_items items nearest its centre, nearest first",
            "npmi": "coherence: mean NPMI of its top-word pairs over the texts (-1 to 1)",
            "run_id": RUN_ID,
        },
    ),
    ITEM_TOPICS: TableDoc(
        "Each item with a text vector in the served fold and its topic",
        {
            "item_id": "item",
            "topic_id": "its topic (table topics)",
            "similarity": "cosine of the item's text vector to the topic's centre (-1 to 1)",
            "run_id": RUN_ID,
        },
    ),
    USER_INTERESTS: TableDoc(
        "What each user is into: the topics' shares of their history, top tags and recent shift",
        {
            "user_id": "user",
            "events": "history events (train and validation) on items with a topic",
            "topic_ids": "every topic of their history, largest share first",
            "shares": "each of those topics' share of the weighted history, same order",
            "top_topic_id": "their largest topic",
            "top_tag": "its label",
            "top_share": "its share (0-1)",
            "tag_topic_ids": "their top topics.interests_top topics",
            "tags": "those topics' labels: the user's interest tags",
            "recent_events": "events in the topics.recent_days before the history's newest event",
            "earlier_events": "events before those",
            "shift": "half the L1 distance between the recent and the earlier topic shares (0: "
            "same mix, 1: no topic in common); null without events on both sides",
            "rising_topic_id": "the topic whose share rose most recently (null without a shift)",
            "rising_tag": "its label",
            "run_id": RUN_ID,
        },
    ),
    LEARNED_RANKER: TableDoc(
        "The learned ranker trained on the validation (and early) fold and whether it is served",
        {
            "served": "true: the recommendations are the ranker's order of the linear hybrid's "
            "top ranker.candidates; false: the linear hybrid's (note says why)",
            "note": "why it is or is not served, with the held-back figures",
            "max_depth": "tree depth picked on held-back users",
            "rounds": "boosting rounds kept (early stopping on held-back NDCG@K)",
            "held_back_ndcg": "the ranker's NDCG@K on the judged users: the validation fold's "
            "(the ranker trained on the early fold) where the early fold is fitted, else "
            "held-back validation users (0-1)",
            "linear_ndcg": "the linear hybrid's NDCG@K on the same users (0-1)",
            "ndcg_gain": "ranker minus linear hybrid, mean over the judged users",
            "ndcg_gain_se": "standard error of ndcg_gain",
            "ndcg_gain_low": "lower end of the ranker.confidence interval of ndcg_gain (> 0: "
            "served)",
            "train_users": "query groups (user and fold) the ranker was fitted on",
            "held_back_users": "users the gain is judged on",
            "features": "the model's feature names, in column order",
            "model": "the xgboost model (UBJSON bytes); MLflow holds it as a model too",
            "run_id": RUN_ID,
        },
    ),
    DEBIAS_CURVE: TableDoc(
        "The hybrid at each popularity de-biasing strength on the test split: accuracy against "
        "catalog coverage, diversity and the long tail",
        {
            "debias": "strength taken off the normalised popularity part (0 = no re-rank)",
            "served": "whether this strength is the one picked on validation and served",
            "metric": "ndcg, hr, coverage, diversity, novelty, tail_hr (hr on the tail_items "
            "segment), sparse_hr (hr on sparse_users)",
            "k": "list length the metric is cut at",
            "value": "the metric's value",
            "run_id": RUN_ID,
        },
    ),
    COMPARISONS: TableDoc(
        "The hybrid against each baseline, paired by test user, with an interval",
        {
            "model": "the baseline compared with (als, cooc, text, popularity, ease, item_knn; "
            "hybrid_linear: the learned ranker against its own first stage)",
            "metric": "ndcg, hr, precision, recall or map",
            "k": "list length",
            "users": "test users in the comparison",
            "difference": "hybrid minus baseline, mean over users (> 0: the hybrid is better)",
            "ci_low": "lower end of the evaluate.confidence (95%) interval of difference",
            "ci_high": "upper end of that interval; an interval spanning 0 is a tie",
            "p_value": "two-sided paired t-test p-value (0-1)",
            "segment": "all, sparse_users or tail_items",
            "run_id": RUN_ID,
        },
    ),
}

TABLES.update(
    {
        EVENTS_LIVE: TableDoc(
            "Events the stream folded in, validated as ingest does, exact repeats dropped",
            {
                "user_id": "user",
                "item_id": "item",
                "rating": "explicit rating; null for implicit events",
                "event_type": "rating, click, purchase or review",
                "event_ts": "when it happened (UTC timestamp)",
                "review_text": "the review, if the event had one",
                "origin": "behaviour or behaviour+review",
                "batch_id": "the stream's micro-batch id",
                "serving_run_id": "the batch run the events were folded against",
                "run_id": "stream-<stream start>-<batch>: the micro-batch's snapshot",
            },
        ),
        RECOMMENDATIONS_LIVE: TableDoc(
            "Top-K lists of the users a micro-batch touched, ranked as the batch ranks",
            {
                **RECOMMENDATION_COLUMNS,
                "batch_id": "the stream's micro-batch id",
                "serving_run_id": "the batch run whose models and weights ranked the list",
                "newest_event_ts": "the user's newest event folded into the list",
                "run_id": "stream-<stream start>-<batch>: the micro-batch's snapshot",
            },
        ),
        USER_INTERESTS_LIVE: TableDoc(
            "Interests of the users a micro-batch touched, against the serving run's topics",
            {
                **{
                    name: meaning
                    for name, meaning in TABLES[USER_INTERESTS].columns.items()
                    if name != "run_id"
                },
                "batch_id": "the stream's micro-batch id",
                "serving_run_id": "the batch run whose topics named the interests",
                "run_id": "stream-<stream start>-<batch>: the micro-batch's snapshot",
            },
        ),
        STREAM_PROGRESS: TableDoc(
            "One row per completed micro-batch: what came in and where each event went",
            {
                "batch_id": "the stream's micro-batch id",
                "serving_run_id": "the batch run folded against",
                "files": "files read",
                "rows_in": "event rows read",
                "rejected": "rows rejected (table rejects, this run_id)",
                "duplicates": "valid rows dropped as exact repeats of events already seen",
                "folded": "events folded in (table events_live)",
                "users_updated": "users with a new list (table recommendations_live)",
                "texts_encoded": "new review texts encoded (added to text_embeddings)",
                "newest_event_ts": "newest event time folded in",
                "lag_seconds": "commit time minus the newest landed file's modification time",
                "seconds": "the micro-batch's wall time until its tables were ready to write",
                "committed_at": (
                    "when the micro-batch's tables were ready to write (UTC); they are written "
                    "side by side and published with this row last"
                ),
                "run_id": "stream-<stream start>-<batch>: the micro-batch's snapshot",
            },
        ),
    }
)

CURRENT_DESCRIPTION = (
    "What to serve now: per user the newest live list of the stream against the newest complete "
    "run, else that run's batch list (list_source says which); with the user's current interest "
    "tags and the interest a text-explained pick lies in, as recommendations_explained names them"
)
EXPLAINED_DESCRIPTION = (
    "Newest complete run's recommendations with the item's title and the title of the history "
    "item its reason names; with the user's interest tags, and the interest a text-explained "
    "pick lies in, where the run has them"
)
INTERESTS_CURRENT_DESCRIPTION = (
    "Users' interests now: per user those of the stream's newest micro-batch against the newest "
    "complete run, else that run's (source says which)"
)
VIEW_DESCRIPTIONS = {
    EXPLAINED: EXPLAINED_DESCRIPTION,
    CURRENT: CURRENT_DESCRIPTION,
    INTERESTS_CURRENT: INTERESTS_CURRENT_DESCRIPTION,
}


def table_comment(name: str) -> str | None:
    doc = TABLES.get(name)
    return doc.description if doc else None


def with_comments(name: str, schema: T.StructType) -> T.StructType:
    """``schema`` with each column's comment from the dictionary (unknown columns keep none)."""
    columns = TABLES[name].columns if name in TABLES else {}
    return T.StructType(
        [
            T.StructField(
                f.name,
                f.dataType,
                f.nullable,
                {**f.metadata, "comment": columns[f.name]} if f.name in columns else f.metadata,
            )
            for f in schema.fields
        ]
    )


def markdown() -> str:
    """The README's table list (each column's meaning is in ``DESCRIBE TABLE``)."""
    lines = ["| table | what it holds | columns |", "|---|---|---|"]
    for name, doc in TABLES.items():
        lines.append(f"| `{name}` | {doc.description} | {', '.join(doc.columns)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
