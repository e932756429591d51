"""benchmarks/validation_variants.py: the transition counts behind its "what came next" part."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import validation_variants  # noqa: E402

from hybridrec import scoring  # noqa: E402
from hybridrec.constants import (  # noqa: E402
    ITEM_COL,
    SPLIT_COL,
    TEST,
    TRAIN,
    TS_COL,
    USER_COL,
    VALIDATION,
)

START = datetime(2026, 1, 1)


def _interactions(spark, sequences: dict[str, list[tuple[str, str]]]):
    rows = [
        (user, item, START + timedelta(days=day), split)
        for user, events in sequences.items()
        for day, (item, split) in enumerate(events)
    ]
    return spark.createDataFrame(
        pd.DataFrame(rows, columns=[USER_COL, ITEM_COL, TS_COL, SPLIT_COL])
    )


def test_transitions_count_what_came_after_in_time_order_within_the_validation_history(spark):
    train = TRAIN
    interactions = _interactions(
        spark,
        {
            # The held-out validation and test rows never count.
            "u1": [("a", train), ("b", train), ("c", train), ("d", VALIDATION), ("e", TEST)],
            "u2": [("b", train), ("c", train)],
        },
    )
    ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    index = scoring.catalog_index(spark, ids)
    matrix = validation_variants.transitions(interactions, index, len(ids))
    a, b, c, d, e = range(5)
    raw = np.zeros((5, 5))
    raw[a, b] = 1.0  # next place
    raw[a, c] = 0.5  # two places on: halved
    raw[b, c] = 2.0  # next place for both users
    expected = raw / np.sqrt(np.maximum(raw.sum(1), 1))[:, None]
    expected /= np.sqrt(np.maximum(raw.sum(0), 1))[None, :]
    assert matrix == pytest.approx(expected.astype(np.float32))
    assert matrix[:, d].sum() == 0 and matrix[:, e].sum() == 0
    assert matrix[c].sum() == 0  # nothing came after c in the validation fold's history
