"""What each config key may hold: free-form sections, choices, optional types, number ranges,
identifier patterns and the paths each source reads.

Rules, not code that applies them: :mod:`hybridrec.config.loader` coerces types while merging and
:mod:`hybridrec.config.checks` holds the merged config to the rest.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone

# Sections whose keys are free-form (their values still have to be scalars of the right kind).
OPEN_MAPS = {
    "spark.conf",
    "stream.kafka.options",
    "als.event_weights",
    "source.generic.options",
    "source.generic.behaviour.columns",
    "source.generic.reviews.columns",
    "source.generic.items.columns",
}

CHOICES = {
    "source.kind": {"sample", "amazon", "movielens", "generic"},
    "ingest.split": {"leave_last_out"},
    "ingest.id_whitespace": {"reject", "trim"},
    "embed.device": {"auto", "cpu", "cuda"},
    "embed.backend": {"torch", "torch-bf16", "onnx", "onnx-fp32"},
    "als.cold_start_strategy": {"drop", "nan"},
    "score.normalisation": {"zscore", "minmax", "rank"},
    "score.catalog": {"interacted", "all"},
    "score.tune_metric": {"ndcg", "hr"},
    "score.early_target": {"auto", "always", "never"},
    "score.near_best_prior": {"centre", "configured"},
    "score.candidates.mode": {"auto", "full", "candidates"},
    "ranker.serve": {"auto", "always"},
    "topics.algorithm": {"kmeans", "bisecting"},
    "topics.sentiment": {"vader", "none"},
    "topics.item_weight": {"uniform", "events"},
    "stream.format": {"csv", "amazon"},
    "stream.source": {"folder", "kafka"},
}

# A null default marks an optional setting; when set, it must be of this type.
OPTIONAL_TYPES: dict[str, type] = {
    "run.warehouse_dir": str,
    "stream.landing_dir": str,
    "stream.checkpoint_dir": str,
    "stream.kafka.bootstrap_servers": str,
    "stream.kafka.topic": str,
    "run.checkpoint_dir": str,
    "run.metastore": str,
    "source.amazon.reviews_path": str,
    "source.amazon.meta_path": str,
    "source.movielens.path": str,
    "source.generic.behaviour.path": str,
    "source.generic.reviews.path": str,
    "source.generic.items.path": str,
    "embed.model_path": str,
    "embed.model_id": str,
    "embed.onnx_cache_dir": str,
    "embed.partitions": int,
    "embed.recency_half_life_days": float,
    "als.num_blocks": int,
    "topics.k": int,
    "mlflow.tracking_uri": str,
}

# The run id becomes a folder name and a partition value; a warehouse database goes into SQL.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
DATABASE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Spark's byte strings: a number with an optional unit (JavaUtils.byteStringAs).
MEMORY_PATTERN = re.compile(r"\d+([kmgtp]b?|b)?", re.IGNORECASE)
SCHEME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
EARLIEST_EVENT_TS = datetime(1900, 1, 1, tzinfo=timezone.utc)

_JAVA_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Bounds:
    """A closed or open interval a number must lie in; None leaves that side open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return "finite"


COUNT = Bounds(1)
SPARK_INT = Bounds(1, _JAVA_INT_MAX)  # passed to Spark as a Java int
NON_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, low_open=True)
FRACTION = Bounds(0, 1)
FINITE = Bounds()

# Every numeric setting of conf/base.yaml (tests/unit/test_config.py checks none is left out);
# null is allowed only where the default is null.
RANGES: dict[str, Bounds] = {
    "run.keep_runs": COUNT,
    "run.lock_wait_seconds": NON_NEGATIVE,
    "run.lock_stale_seconds": POSITIVE,
    "stream.trigger_seconds": POSITIVE,
    "stream.max_files_per_trigger": SPARK_INT,
    "stream.fold_block_users": COUNT,
    "stream.local_max_events": NON_NEGATIVE,
    "stream.kafka.max_offsets_per_trigger": SPARK_INT,
    "spark.shuffle_partitions": SPARK_INT,
    "spark.arrow_batch_rows": SPARK_INT,
    "source.sample.n_users": COUNT,
    "source.sample.n_items": COUNT,
    "source.sample.n_topics": COUNT,
    "source.sample.events_per_user": POSITIVE,
    "source.sample.sequence_strength": FRACTION,
    "source.sample.style_weight": NON_NEGATIVE,
    "source.sample.review_fraction": FRACTION,
    "source.sample.orphan_review_fraction": FRACTION,
    "source.sample.bad_row_fraction": FRACTION,
    "source.sample.seed": NON_NEGATIVE,  # numpy refuses negative seeds
    "ingest.min_rating": FINITE,  # and below ingest.max_rating
    "ingest.max_rating": FINITE,
    "embed.batch_size": COUNT,
    "embed.max_length": COUNT,
    "embed.partitions": SPARK_INT,
    "embed.texts_per_task": COUNT,
    "embed.item_meta_weight": NON_NEGATIVE,
    "embed.recency_half_life_days": POSITIVE,
    "embed.text_neighbours": COUNT,
    "als.rank": SPARK_INT,
    "als.reg_param": NON_NEGATIVE,
    "als.alpha": POSITIVE,  # implicit confidence 1 + alpha * preference
    "als.max_iter": SPARK_INT,
    "als.checkpoint_interval": SPARK_INT,
    "als.num_blocks": SPARK_INT,
    "als.seed": Bounds(-(2**63), 2**63 - 1),  # a Java long
    "cooc.history_items": COUNT,
    "cooc.time_scale_days": POSITIVE,
    "cooc.neighbours": COUNT,
    "transitions.window": COUNT,
    "transitions.neighbours": COUNT,
    "score.k": COUNT,
    "score.recent_half_life": POSITIVE,
    "score.recent_sharpness": POSITIVE,
    "score.cooc_half_life": POSITIVE,
    "score.next_items": COUNT,
    "score.next_half_life": POSITIVE,
    "score.next_confidence": Bounds(0, 1, high_open=True),
    "score.near_best_points": COUNT,
    "score.near_best_se": NON_NEGATIVE,
    "score.weight_grid_step": Bounds(0, 1, low_open=True),
    "score.user_block_rows": COUNT,
    "score.catalog_cache_mb": POSITIVE,
    "score.tune_max_users": COUNT,
    "score.early_target_below": COUNT,
    "score.history_items": COUNT,
    "score.candidates.max_full_items": COUNT,
    "score.candidates.max_memory_items": NON_NEGATIVE,  # 0: candidates are always Spark rows
    "score.candidates.als": NON_NEGATIVE,
    "score.candidates.cooc": NON_NEGATIVE,
    "score.candidates.text": NON_NEGATIVE,
    "score.candidates.next": NON_NEGATIVE,
    "score.candidates.popular": NON_NEGATIVE,
    "score.candidates.item_block_rows": COUNT,
    "evaluate.k": COUNT,  # and at most score.k
    "evaluate.curve_max_users": COUNT,
    "evaluate.segment_fraction": Bounds(0, 1, low_open=True),
    "evaluate.confidence": Bounds(0, 1, low_open=True, high_open=True),
    "evaluate.ease.max_items": NON_NEGATIVE,  # 0: EASE never runs
    "evaluate.ease.tuning_broadcast_mb": POSITIVE,
    "score.max_ndcg_loss": FRACTION,
    "score.rerank_slots": NON_NEGATIVE,  # and at most score.k
    "score.popular_reason_share": FRACTION,
    "ranker.candidates": COUNT,  # and at least score.k
    "ranker.train_max_users": COUNT,
    "ranker.holdout_share": Bounds(0, 1, low_open=True, high_open=True),
    "ranker.confidence": Bounds(0, 1, high_open=True),
    "ranker.learning_rate": Bounds(0, 1, low_open=True),
    "ranker.min_child_weight": NON_NEGATIVE,
    "ranker.subsample": Bounds(0, 1, low_open=True),
    "ranker.colsample_bytree": Bounds(0, 1, low_open=True),
    "ranker.reg_lambda": NON_NEGATIVE,
    "ranker.max_rounds": COUNT,
    "ranker.early_stopping_rounds": COUNT,
    "ranker.trend_days": POSITIVE,
    "ranker.workers": COUNT,
    "topics.k": Bounds(2, 1000),
    "topics.silhouette_sample": Bounds(10),
    "topics.seed": SPARK_INT,
    "topics.label_words": COUNT,  # and at most topics.top_words
    "topics.top_words": Bounds(2, 100),
    "topics.vocab_size": Bounds(10, _JAVA_INT_MAX),
    "topics.min_doc_freq": COUNT,
    "topics.min_word_length": COUNT,
    "topics.central_items": COUNT,
    "topics.recent_days": POSITIVE,
    "topics.interests_top": COUNT,
    "topics.sentiment_check_rows": NON_NEGATIVE,
    "topics.coherence_docs": COUNT,
    "topics.coherence_random_sets": NON_NEGATIVE,
}
# Lists of numbers: each must be non-empty, of the element type, and every element in range.
LIST_RANGES: dict[str, tuple[type, Bounds]] = {
    "als.grid.rank": (int, SPARK_INT),
    "als.grid.reg_param": (float, NON_NEGATIVE),
    "als.grid.alpha": (float, POSITIVE),
    "score.recent_sharpness_grid": (float, POSITIVE),
    "score.debias_grid": (float, NON_NEGATIVE),
    "score.next_share_grid": (float, FRACTION),
    "evaluate.ease.l2_grid": (float, POSITIVE),
    "evaluate.item_knn.neighbours_grid": (int, COUNT),
    "ranker.max_depth_grid": (int, COUNT),
    "topics.k_grid": (int, Bounds(2, 1000)),
}
# Maps whose values are all numbers in one range (each entry is named on its own).
MAP_RANGES: dict[str, Bounds] = {
    "als.event_weights": NON_NEGATIVE,
    "score.weights": NON_NEGATIVE,  # and their sum positive
}
# Local files or folders the selected source reads (remote URIs are left to Spark).
SOURCE_PATHS = {
    "sample": (),
    "amazon": ("source.amazon.reviews_path", "source.amazon.meta_path"),
    "movielens": ("source.movielens.path",),
    "generic": (
        "source.generic.behaviour.path",
        "source.generic.reviews.path",
        "source.generic.items.path",
    ),
}

# A generic source's column maps: ours -> the file's column name.
COLUMN_MAPS = (
    "source.generic.behaviour.columns",
    "source.generic.reviews.columns",
    "source.generic.items.columns",
)
