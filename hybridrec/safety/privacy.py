"""Pseudonymous user ids: with ``privacy.pseudonymise_user_ids``, ingest replaces every user id by
the hex HMAC-SHA256 of it under a secret key, before any table is written.

What is protected:

- ``interactions.user_id`` and everything derived from it (embeddings, factors,
  recommendations, metrics per user) hold only the pseudonym. It is taken after validation and
  whitespace handling (``ingest.id_whitespace: trim`` trims first), so one user is one pseudonym.
  The same key gives the same pseudonym in every run (so runs can be compared, and a user's
  history stays one history); without the key it cannot be turned back or recomputed.
- ``rejects.raw`` of behaviour and review rows: every occurrence of the row's user id (as read)
  that stands alone (not inside a longer word or number) is replaced by its pseudonym. Where that
  cannot be done, the whole ``raw`` becomes ``<redacted>``: the row has no readable user id (an
  unparseable record, a missing id: the record may still hold one the reader could not find), or
  the id does not occur as it was read (written escaped, as in JSON ``\\"``). A coincidence is
  replaced too: with user ``"1"`` a rating of ``1`` in the same raw becomes the pseudonym (safe,
  if less readable).
- The key: read from the environment variable named by ``privacy.key_env`` (never from a config
  file), never logged, and never put into a Spark expression as a literal (plans are shown in the
  Spark UI and logs). It travels to executors inside the pickled pandas UDF, as any closure does.

What is not protected:

- item ids, timestamps and ratings, which with enough history can re-identify a person (the
  timing of events in particular);
- review text and summaries, which may name people or describe them;
- other personal fields inside ``rejects.raw`` (Amazon's ``reviewerName``, say): raw is the
  record as read, only its user id is replaced;
- ``rejects.raw`` of item metadata rows (no user id in it by design of the sources).

Anyone holding the key can recompute a known user's pseudonym: keep it like a password, and
rotate it knowing that a new key gives every user a new pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from hybridrec.config.loader import Config
from hybridrec.constants import USER_COL

REDACTED = "<redacted>"
# Around a replaced id: not a letter, digit or "_" (so "U1" is not replaced inside "U10").
_BEFORE = r"(?<![\p{L}\p{N}_])"
_AFTER = r"(?![\p{L}\p{N}_])"


class MissingKeyError(RuntimeError):
    """Pseudonymisation is on but the key's environment variable is not set."""


def read_key(cfg: Config) -> bytes:
    """The HMAC key from the environment variable ``privacy.key_env`` names.

    Raises:
        MissingKeyError: the variable is unset or empty (the message names it, not its value).
    """
    name = cfg.privacy.key_env
    value = os.environ.get(name, "")
    if not value.strip():
        raise MissingKeyError(
            f"privacy.pseudonymise_user_ids is on but the environment variable {name} "
            "(privacy.key_env) is not set"
        )
    return value.encode("utf-8")


def pseudonym(user_id: str, key: bytes) -> str:
    """The hex HMAC-SHA256 of ``user_id`` (UTF-8) under ``key``."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym_column(col: Column, key: bytes) -> Column:
    """``col``'s values replaced by their pseudonyms (null stays null), in a pandas UDF whose
    closure holds the key, so that it is in no plan."""

    def pseudonymise_user_id(ids: pd.Series) -> pd.Series:
        # HMAC has no vectorised form: one digest per distinct id of the batch.
        digests = {value: pseudonym(value, key) for value in ids.dropna().unique()}
        # object dtype: an all-null batch must stay strings-or-None, not become floats (NaN).
        return ids.map(digests).astype(object).where(ids.notna(), None)

    return F.pandas_udf(pseudonymise_user_id, "string")(col)


def pseudonymise(df: DataFrame, key: bytes, column: str = USER_COL) -> DataFrame:
    """``df`` with ``column`` replaced by its pseudonyms."""
    return df.withColumn(column, pseudonym_column(F.col(column), key))


def redact_rejects(rejects: DataFrame, key: bytes) -> DataFrame:
    """Rejects (``raw`` and the ``user_id`` as read) with the user id in ``raw`` replaced by its
    pseudonym, or ``raw`` replaced whole by ``<redacted>`` where that cannot be done (module doc);
    ``user_id`` becomes the pseudonym too."""
    user = F.col(USER_COL)
    with_pseudonym = rejects.withColumn("_pseudonym", pseudonym_column(user, key))
    # The id as a literal Java regex: \Q...\E, with any \E inside it closed and reopened.
    literal = F.concat(F.lit(r"\Q"), F.replace(user, F.lit(r"\E"), F.lit(r"\E\\E\Q")), F.lit(r"\E"))
    pattern = F.concat(F.lit(_BEFORE), literal, F.lit(_AFTER))
    replaced = F.regexp_replace(F.col("raw"), pattern, F.col("_pseudonym"))
    blank = user.isNull() | user.rlike(r"(?U)\A\s*\z")
    raw = (
        F.when(blank, F.lit(REDACTED))
        .when(F.coalesce(replaced == F.col("raw"), F.lit(True)), F.lit(REDACTED))
        .otherwise(replaced)
    )
    return (
        with_pseudonym.withColumn("raw", raw)
        .withColumn(USER_COL, F.col("_pseudonym"))
        .drop("_pseudonym")
    )
