"""Pure transforms of the ingest stage: validate raw rows, join behaviour with reviews, split.

Every raw row ends in exactly one place: an ``interactions`` row, a ``rejects`` row with a reason,
or (a review) attached to the behaviour row of the same user and item. ``origin`` on each
interaction records which, so the job can prove that no row was lost.

Input is not trusted, and nothing is silently altered: a row is kept with the values it came with
or rejected with the first reason that applies, in this order:

- ``invalid encoding``: bytes that are not UTF-8 anywhere in the record (its ids, text or ``raw``).
  Spark's CSV and JSON readers decode bad bytes to U+FFFD while its text and Parquet readers keep
  them as they are, so both are the signal: a literal U+FFFD in the input is rejected the same way.
  A table column has to hold valid UTF-8, so such a reject's ``raw`` shows each bad sequence as
  U+FFFD.
- the reader's own finding (``parse_error``: ``wrong number of fields``, ``unparseable record``),
  or ``unparseable record`` when neither id nor timestamp could be read.
- ``missing user_id`` / ``missing item_id``: null, empty or only whitespace.
- ``user_id has surrounding whitespace`` / ``item_id has ...``: with ``ingest.id_whitespace:
  reject`` (the default), since ``" U003 "`` and ``"U003"`` would be two users. With ``trim`` the
  ids are trimmed first, the one documented normalisation of an id (whitespace is Unicode
  White_Space, not only the space Spark's ``trim`` knows).
- ``user_id has control characters`` / ``item_id has ...``: a Unicode Cc character (tab, NUL,
  ESC, ...) inside an id. Invisible format characters (zero-width space) are not checked.
- ``invalid event_ts``, then ``event_ts before <ingest.min_event_ts>`` / ``event_ts after
  <latest>``: ``latest_event_ts`` is passed in (the job's start + 1 day), so these transforms stay
  pure. Year 3000, year -1000 and epoch 0 are all outside and rejected, so no stored timestamp
  is one that pandas or Python cannot represent.
- ``rating is not a number``, ``rating outside [min, max]``.
- behaviour: ``event_type not in [...]``; ``rating event without rating``. A review without a
  rating is kept (its text is the signal; MovieLens tags and most generic review tables have no
  stars) unless the source says its reviews are its rating events (Amazon: ``overall`` is the
  review's rating), then it is a ``rating event without rating`` too.
- ``duplicate row``: an exact repeat of a valid row.

Review text is the one other normalisation: summary and body are trimmed and joined with ``". "``
(``review_text``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from hybridrec.config.loader import Config
from hybridrec.constants import (
    EVENT_COL,
    ITEM_COL,
    RATING_COL,
    SPLIT_COL,
    TEST,
    TEXT_COL,
    TRAIN,
    TS_COL,
    USER_COL,
    VALIDATION,
)

ORIGIN_BEHAVIOUR = "behaviour"
ORIGIN_BEHAVIOUR_REVIEW = "behaviour+review"
ORIGIN_REVIEW = "review"
REVIEW_EVENT = "review"

# The rejects table's columns; validators add the user id as read (for redaction), not written.
REJECT_COLUMNS = ["source", "raw", "reason", "run_id"]
INVALID_ENCODING = "invalid encoding"
UNPARSEABLE = "unparseable record"
RATING_EVENT_WITHOUT_RATING = "rating event without rating"
REPLACEMENT_CHAR = "\ufffd"
# Java regexes; (?U) makes \s Unicode White_Space (NBSP, ideographic space, ...).
_SURROUNDING_WS = r"(?U)\A\s|\s\z"
_TRIM_WS = r"(?U)\A\s+|\s+\z"
_ONLY_WS = r"(?U)\A\s*\z"
_CONTROL = r"\p{Cc}"
# String columns of the raw shapes whose bytes are checked; others are absent or derived.
_TEXT_COLUMNS = (
    USER_COL,
    ITEM_COL,
    EVENT_COL,
    TS_COL,
    "rating_raw",
    "summary",
    TEXT_COL,
    "title",
    "description",
    "raw",
)


class EmptyInputError(RuntimeError):
    """The input has no valid behaviour or review row; no table was written."""


@dataclass
class Validated:
    """``valid`` rows (raw columns plus ``_ts``) and ``rejects`` (``REJECT_COLUMNS``, plus
    ``user_id`` as checked for behaviour and reviews, so that it can be redacted from ``raw``)."""

    valid: DataFrame
    rejects: DataFrame


def utc_datetime(text: str) -> datetime:
    """An ISO-8601 string (``Z`` suffix allowed; no zone means UTC) as an aware UTC datetime."""
    text = text.strip()
    if text[-1:] in {"Z", "z"}:
        text = f"{text[:-1]}+00:00"  # Python 3.10 does not read the Z suffix
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def iso_utc(ts: datetime) -> str:
    """``2026-11-24T21:40:00Z``: how bounds are written in reject reasons."""
    return ts.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_event_ts(raw: Column) -> Column:
    """Epoch seconds, epoch milliseconds or an ISO-8601 string; null when it is none of these.

    An ISO string must start with a whole date: Spark alone would read ``12:00`` as today at noon
    and ``2024-05`` as the first of May, inventing what the input did not say.
    """
    text = F.trim(raw.cast("string"))
    return (
        F.when(text.rlike(r"^\d{1,11}$"), F.timestamp_seconds(text.cast("long")))
        .when(text.rlike(r"^\d{12,14}$"), F.timestamp_millis(text.cast("long")))
        .when(
            text.rlike(r"^[+-]?\d{4,}-\d{2}-\d{2}([T ]|$)"),
            F.expr(f"try_to_timestamp({_sql(text)})"),
        )
    )


def _sql(col: Column) -> str:
    """The SQL text of a column expression, to nest it in F.expr."""
    return col._jc.toString()


def _blank(col: str) -> Column:
    return F.col(col).isNull() | F.col(col).rlike(_ONLY_WS)


def _trim(col: Column) -> Column:
    """Unicode whitespace off both ends (Spark's ``trim`` removes only the space character)."""
    return F.regexp_replace(col, _TRIM_WS, "")


def _reason(checks: list[tuple[Column, Column | str]]) -> Column:
    """The first failing check's reason, or null for a valid row."""
    reason = F.lit(None).cast("string")
    for condition, text in reversed(checks):
        value = text if isinstance(text, Column) else F.lit(text)
        reason = F.when(F.coalesce(condition, F.lit(False)), value).otherwise(reason)
    return reason


def _bad_encoding(df: DataFrame) -> Column:
    bad = F.lit(False)
    for name in _TEXT_COLUMNS:
        if name in df.columns:
            col = F.col(name)
            bad = bad | F.coalesce(
                ~F.is_valid_utf8(col) | col.contains(REPLACEMENT_CHAR), F.lit(False)
            )
    return bad


def _id_checks(cfg: Config, ids: list[str]) -> list[tuple[Column, str]]:
    """Blank, surrounding whitespace (reject mode; trim mode trimmed them before) and control
    characters, per id column."""
    checks = [(_blank(name), f"missing {name}") for name in ids]
    if cfg.ingest.id_whitespace == "reject":
        checks += [
            (F.col(name).rlike(_SURROUNDING_WS), f"{name} has surrounding whitespace")
            for name in ids
        ]
    checks += [(F.col(name).rlike(_CONTROL), f"{name} has control characters") for name in ids]
    return checks


def _normalise_ids(df: DataFrame, cfg: Config, ids: list[str]) -> DataFrame:
    if cfg.ingest.id_whitespace == "trim":
        for name in ids:
            df = df.withColumn(name, _trim(F.col(name)))
    return df


def _record_checks(df: DataFrame) -> list[tuple[Column, Column | str]]:
    """Encoding first (a record with bad bytes is bad whatever else), then the reader's verdict."""
    checks: list[tuple[Column, Column | str]] = [(_bad_encoding(df), INVALID_ENCODING)]
    if "parse_error" in df.columns:
        checks.append((F.col("parse_error").isNotNull(), F.col("parse_error")))
    return checks


def _event_checks(
    df: DataFrame, cfg: Config, latest_event_ts: datetime
) -> list[tuple[Column, Column | str]]:
    earliest = utc_datetime(cfg.ingest.min_event_ts)
    # Nothing readable at all (a JSON line that is not a record, say): one reason, not three.
    unreadable = _blank(USER_COL) & _blank(ITEM_COL) & F.col("_ts").isNull()
    checks = _record_checks(df) + [(unreadable, UNPARSEABLE)]
    checks += _id_checks(cfg, [USER_COL, ITEM_COL])
    checks += [
        (F.col("_ts").isNull(), f"invalid {TS_COL}"),
        (F.col("_ts") < F.lit(earliest), f"{TS_COL} before {iso_utc(earliest)}"),
        (F.col("_ts") > F.lit(latest_event_ts), f"{TS_COL} after {iso_utc(latest_event_ts)}"),
    ]
    rating = F.col(RATING_COL)
    if "rating_raw" in df.columns:
        checks.append((F.col("rating_raw").isNotNull() & rating.isNull(), "rating is not a number"))
    checks.append(
        (
            rating.isNotNull()
            & (
                rating.isNaN() | (rating < cfg.ingest.min_rating) | (rating > cfg.ingest.max_rating)
            ),
            f"rating outside [{cfg.ingest.min_rating}, {cfg.ingest.max_rating}]",
        )
    )
    return checks


def _split_rejects(
    df: DataFrame,
    reason: Column,
    repeats: Window,
    repeat_reason: str,
    run_id: str,
    *,
    keep_user: bool = True,
) -> Validated:
    """Reject a row with its first failing check's reason; of the valid rows that fall in one
    ``repeats`` window, keep the first and reject the others with ``repeat_reason``."""
    flagged = df.withColumn("_reason", reason)
    flagged = flagged.withColumn(
        "_reason",
        F.when(
            F.col("_reason").isNull() & (F.row_number().over(repeats) > 1), F.lit(repeat_reason)
        ).otherwise(F.col("_reason")),
    )
    extra = [F.make_valid_utf8(USER_COL).alias(USER_COL)] if keep_user else []
    rejects = flagged.where(F.col("_reason").isNotNull()).select(
        "source",
        # A table column holds valid UTF-8: bad bytes of an "invalid encoding" row show as U+FFFD.
        F.make_valid_utf8("raw").alias("raw"),
        F.col("_reason").alias("reason"),
        F.lit(run_id).alias("run_id"),
        *extra,
    )
    return Validated(flagged.where(F.col("_reason").isNull()).drop("_reason"), rejects)


def _exact_repeats(keys: list[str]) -> Window:
    # Exact repeats of a valid row (same keys and same raw record) carry no new information.
    return Window.partitionBy(*keys, "raw").orderBy(F.lit(1))


# Built Columns by (config, key): the stream validates every micro-batch with the same checks, and
# building them is a few thousand py4j calls (0.4 s); a Column names its inputs, so it applies
# to any frame with the same columns.
_BUILT: dict[tuple, tuple[Config, Column]] = {}


def _memoised(cfg: Config, key: tuple, build) -> Column:
    entry = _BUILT.get((id(cfg), *key))
    if entry is None or entry[0] is not cfg:
        if len(_BUILT) >= 16:
            _BUILT.clear()
        entry = _BUILT[(id(cfg), *key)] = (cfg, build())
    return entry[1]


def validate_behaviour(
    df: DataFrame, cfg: Config, run_id: str, *, latest_event_ts: datetime
) -> Validated:
    """Split raw behaviour rows into valid rows (with parsed ``_ts``) and rejects.

    Args:
        latest_event_ts: the latest acceptable event time (the job passes its start + 1 day).
    """
    df = _normalise_ids(df, cfg, [USER_COL, ITEM_COL])
    df = df.withColumn("_ts", parse_event_ts(F.col(TS_COL)))

    def reason() -> Column:
        checks = _event_checks(df, cfg, latest_event_ts)
        checks += [
            (
                ~F.col(EVENT_COL).isin(list(cfg.ingest.event_types)) | F.col(EVENT_COL).isNull(),
                f"{EVENT_COL} not in {list(cfg.ingest.event_types)}",
            ),
            (
                (F.col(EVENT_COL) == "rating") & F.col(RATING_COL).isNull(),
                RATING_EVENT_WITHOUT_RATING,
            ),
        ]
        return _reason(checks)

    key = ("behaviour", tuple(df.columns), latest_event_ts)
    repeats = _exact_repeats([USER_COL, ITEM_COL, "_ts", EVENT_COL])
    return _split_rejects(df, _memoised(cfg, key, reason), repeats, "duplicate row", run_id)


def validate_reviews(
    df: DataFrame,
    cfg: Config,
    run_id: str,
    *,
    latest_event_ts: datetime,
    rating_required: bool = False,
) -> Validated:
    """Split raw review rows into valid rows (with parsed ``_ts``) and rejects.

    Args:
        latest_event_ts: the latest acceptable event time (the job passes its start + 1 day).
        rating_required: the source's reviews are its rating events (Amazon), so a review
            without a rating is rejected; otherwise a text-only review is kept.
    """
    df = _normalise_ids(df, cfg, [USER_COL, ITEM_COL])
    df = df.withColumn("_ts", parse_event_ts(F.col(TS_COL)))
    checks = _event_checks(df, cfg, latest_event_ts)
    if rating_required:
        checks.append((F.col(RATING_COL).isNull(), RATING_EVENT_WITHOUT_RATING))
    repeats = _exact_repeats([USER_COL, ITEM_COL, "_ts"])
    return _split_rejects(df, _reason(checks), repeats, "duplicate row", run_id)


def validate_items(df: DataFrame, cfg: Config, run_id: str) -> Validated:
    """Split raw item rows into valid rows and rejects (ids checked as for events; the richest
    record of a repeated item is kept)."""
    df = _normalise_ids(df, cfg, [ITEM_COL])
    checks = _record_checks(df) + _id_checks(cfg, [ITEM_COL])
    # Metadata dumps repeat products: keep the record with the most text, reject the others.
    richest = Window.partitionBy(ITEM_COL).orderBy(
        F.length(F.coalesce("description", F.lit(""))).desc(), F.col("raw")
    )
    reason = _reason(checks)
    return _split_rejects(df, reason, richest, f"duplicate {ITEM_COL}", run_id, keep_user=False)


def review_text(df: DataFrame) -> Column:
    """Summary and body as one text; null when both are empty."""
    summary = F.when(~_blank("summary"), _trim(F.col("summary")))
    body = F.when(~_blank(TEXT_COL), _trim(F.col(TEXT_COL)))
    joined = F.concat_ws(". ", summary, body)
    return F.when(joined != "", joined)


def join_interactions(behaviour: DataFrame | None, reviews: DataFrame | None) -> DataFrame:
    """One row per behaviour event, carrying the review of the same user and item.

    The k-th latest review of a (user, item) pair attaches to its k-th latest behaviour row; a
    review left over (no behaviour row for it) is an interaction of its own, so no text is lost.
    """
    if behaviour is None and reviews is None:
        raise ValueError("the source gave neither a behaviour nor a reviews table")
    pair_rank = Window.partitionBy(USER_COL, ITEM_COL).orderBy(F.col("_ts").desc(), F.col("raw"))
    if reviews is not None:
        r = reviews.select(
            USER_COL,
            ITEM_COL,
            F.col(RATING_COL).alias("_r_rating"),
            F.col("_ts").alias("_r_ts"),
            review_text(reviews).alias(TEXT_COL),
            F.row_number().over(pair_rank).alias("_k"),
        )
    if behaviour is None:
        return r.select(
            USER_COL,
            ITEM_COL,
            F.col("_r_rating").alias(RATING_COL),
            F.lit(REVIEW_EVENT).alias(EVENT_COL),
            F.col("_r_ts").alias(TS_COL),
            TEXT_COL,
            F.lit(ORIGIN_REVIEW).alias("origin"),
        )
    b = behaviour.select(
        USER_COL,
        ITEM_COL,
        RATING_COL,
        EVENT_COL,
        F.col("_ts").alias("_b_ts"),
        F.row_number().over(pair_rank).alias("_k"),
        F.lit(True).alias("_has_b"),
    )
    if reviews is None:
        return b.select(
            USER_COL,
            ITEM_COL,
            RATING_COL,
            EVENT_COL,
            F.col("_b_ts").alias(TS_COL),
            F.lit(None).cast("string").alias(TEXT_COL),
            F.lit(ORIGIN_BEHAVIOUR).alias("origin"),
        )
    joined = b.join(r, [USER_COL, ITEM_COL, "_k"], "full_outer")
    has_b = F.col("_has_b").isNotNull()
    return joined.select(
        USER_COL,
        ITEM_COL,
        # A behaviour row without a rating takes its review's (null when there is no review).
        F.coalesce(RATING_COL, "_r_rating").alias(RATING_COL),
        F.when(has_b, F.col(EVENT_COL)).otherwise(F.lit(REVIEW_EVENT)).alias(EVENT_COL),
        F.coalesce("_b_ts", "_r_ts").alias(TS_COL),
        TEXT_COL,
        F.when(has_b & F.col("_r_ts").isNotNull(), F.lit(ORIGIN_BEHAVIOUR_REVIEW))
        .when(has_b, F.lit(ORIGIN_BEHAVIOUR))
        .otherwise(F.lit(ORIGIN_REVIEW))
        .alias("origin"),
    )


def leave_last_out_split(interactions: DataFrame) -> DataFrame:
    """Per user, the latest item is test and the one before it validation; the rest is train.

    Items are ordered by the pair's latest event, so all events of one (user, item) share a split
    and a held-out item never also appears in train. A user with two items gives no validation
    item, a user with one keeps it in train.
    """
    pairs = interactions.groupBy(USER_COL, ITEM_COL).agg(F.max(TS_COL).alias("_last"))
    by_user = Window.partitionBy(USER_COL)
    newest_first = by_user.orderBy(F.col("_last").desc(), F.col(ITEM_COL).desc())
    pairs = pairs.withColumn("_r", F.row_number().over(newest_first)).withColumn(
        "_n", F.count(F.lit(1)).over(by_user)
    )
    split = (
        F.when((F.col("_r") == 1) & (F.col("_n") >= 2), F.lit(TEST))
        .when((F.col("_r") == 2) & (F.col("_n") >= 3), F.lit(VALIDATION))
        .otherwise(F.lit(TRAIN))
    )
    pairs = pairs.select(USER_COL, ITEM_COL, split.alias(SPLIT_COL))
    return interactions.join(pairs, [USER_COL, ITEM_COL], "inner")


def build_items(items: DataFrame | None, interactions: DataFrame) -> DataFrame:
    """The catalog: metadata items plus every item seen in interactions (text null if unknown)."""
    seen = interactions.select(ITEM_COL).distinct()
    if items is None:
        return seen.select(
            ITEM_COL,
            F.lit(None).cast("string").alias("title"),
            F.lit(None).cast("string").alias("description"),
            F.lit(False).alias("has_metadata"),
        )
    meta = items.select(
        ITEM_COL,
        F.when(~_blank("title"), _trim(F.col("title"))).alias("title"),
        F.when(~_blank("description"), _trim(F.col("description"))).alias("description"),
        F.lit(True).alias("has_metadata"),
    )
    return meta.join(seen, ITEM_COL, "full_outer").select(
        ITEM_COL,
        "title",
        "description",
        F.coalesce("has_metadata", F.lit(False)).alias("has_metadata"),
    )
