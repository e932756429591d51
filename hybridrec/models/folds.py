"""Which interactions each fold may learn from (see ``constants.FOLDS``)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from hybridrec.constants import FOLDS, SPLIT_COL


def history(interactions: DataFrame, fold: str) -> DataFrame:
    """The interactions a model of ``fold`` is fitted on; the fold's own split is held out."""
    if fold not in FOLDS:
        raise ValueError(f"unknown fold {fold!r}; folds are {list(FOLDS)}")
    return interactions.where(F.col(SPLIT_COL).isin(list(FOLDS[fold])))
