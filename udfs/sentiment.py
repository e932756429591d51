"""Review sentiment as a Spark pandas UDF: VADER (Hutto and Gilbert 2014), a lexicon and rule
based analyser whose lexicon ships inside the ``vaderSentiment`` wheel, so it runs offline. Its
``compound`` score lies in [-1, 1]; ``topics.sentiment`` uses it as the rating of an event that
has review text and no rating."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

# VADER's own thresholds for a positive or negative text (its README); between them, neutral.
POSITIVE, NEGATIVE = 0.05, -0.05


@lru_cache(maxsize=1)
def _analyser():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def compound_scores(texts: pd.Series) -> pd.Series:
    """VADER's compound score per text; NaN for a missing or blank one."""
    analyser = _analyser()
    # VADER scores one text at a time (its rules read each sentence's words in order); at
    # ~20k short reviews/s per core that is far from the pipeline's bottleneck.
    return pd.Series(
        [
            analyser.polarity_scores(t)["compound"] if isinstance(t, str) and t.strip() else None
            for t in texts
        ],
        index=texts.index,
        dtype="float64",
    )


@F.pandas_udf(T.DoubleType())
def compound_udf(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
    for texts in batches:
        yield compound_scores(texts)


def as_rating(compound, low: float, high: float):
    """A compound score (Column or number) mapped linearly onto the rating scale [low, high]."""
    return low + (compound + 1.0) / 2.0 * (high - low)
