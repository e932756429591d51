"""Column and table names shared by every stage (the table contracts in README.md, 'Tables')."""

# The views need these light (no Spark): they are defined there.
from hybridrec.views import (  # noqa: F401
    INTEREST_TABLES,
    ITEMS,
    RECOMMENDATIONS,
    USER_INTERESTS_LIVE,
)
from udfs.ranking_kernel import PARTS

USER_COL = "user_id"
ITEM_COL = "item_id"
RATING_COL = "rating"
TS_COL = "event_ts"
EVENT_COL = "event_type"
TEXT_COL = "review_text"
SPLIT_COL = "split"
EMBEDDING_COL = "embedding"
FACTORS_COL = "factors"

TRAIN, VALIDATION, TEST = "train", "validation", "test"
# Not a split in the interactions table: each user's newest train item, held out by
# ``folds.history`` and ``folds.held_out`` for the ``early`` fold only.
EARLY = "early"

# Every model is fitted twice, or three times. The ``validation`` fold is fitted on train and
# judged on validation (hyper-parameters, fusion weights); the ``test`` fold is refitted on train
# and validation with those choices, ranks for test, and is what gets served. Test never feeds a
# fit. Where validation has few users (``score.early_target``), the ``early`` fold, fitted on
# train less each user's newest train item and judged on that item, doubles the users the fusion
# weights are picked on (``folds.model_folds``).
FOLD_COL = "fold"
FOLDS = {EARLY: (TRAIN,), VALIDATION: (TRAIN,), TEST: (TRAIN, VALIDATION)}
TUNING_FOLDS = (EARLY, VALIDATION)

HYBRID = "hybrid"
# The linear hybrid, a model row of its own where the learned ranker is served (hybrid is then
# the ranker's order of the linear hybrid's candidates).
HYBRID_LINEAR = "hybrid_linear"
MODELS = (HYBRID, HYBRID_LINEAR, "als", "cooc", "text", "popularity", "ease", "item_knn")
# The re-rank curve's lists (the hybrid at each popularity de-biasing strength) are named so.
CURVE_PREFIX = "debias="
# Fusion weights that turn the hybrid kernel into each single-signal baseline. The text
# baseline's mix of its two text parts is re-picked on validation when the hybrid's weights are.
BASELINE_WEIGHTS = {
    model: {part: weights.get(part, 0.0) for part in PARTS}
    for model, weights in {
        "als": {"cf": 1.0},
        "cooc": {"cooc": 1.0},
        "text": {"text": 0.5, "recent": 0.5},
        "popularity": {"pop": 1.0},
    }.items()
}
TEXT_PARTS = ("text", "recent")

# The pipeline's stages in order; a run is complete once all of them have succeeded.
STAGE_NAMES = ("ingest", "embed", "topics", "als", "score", "evaluate")

INTERACTIONS = "interactions"
REJECTS = "rejects"
TEXT_EMBEDDINGS = "text_embeddings"
ITEM_EMBEDDINGS = "item_embeddings"
USER_EMBEDDINGS = "user_embeddings"
ALS_USER_FACTORS = "als_user_factors"
ALS_ITEM_FACTORS = "als_item_factors"
ITEM_NEIGHBOURS = "item_neighbours"
ITEM_TRANSITIONS = "item_transitions"
ITEM_TEXT_NEIGHBOURS = "item_text_neighbours"
BASELINE_RECOMMENDATIONS = "baseline_recommendations"
METRICS = "metrics"
COMPARISONS = "comparisons"
FUSION_WEIGHTS = "fusion_weights"
LEARNED_RANKER = "learned_ranker"
USER_INTERESTS, ITEM_TOPICS, TOPICS = INTEREST_TABLES
DEBIAS_CURVE = "debias_curve"
ALS_PARAMS = "als_params"
# Written by the stream (hybridrec stream), one snapshot per micro-batch.
EVENTS_LIVE = "events_live"
RECOMMENDATIONS_LIVE = "recommendations_live"
STREAM_PROGRESS = "stream_progress"
