"""Which weights evaluate ranks the hybrid and the text baseline with."""

from __future__ import annotations

import pytest

from hybridrec.config.loader import load_config
from hybridrec.constants import BASELINE_WEIGHTS, FUSION_WEIGHTS
from jobs.evaluate import picked_weights
from udfs.ranking_kernel import PARTS


class _Warehouse:
    """Just the fusion weights table, or none."""

    def __init__(self, table=None):
        self.table = table

    def exists(self, name: str) -> bool:
        return name == FUSION_WEIGHTS and self.table is not None

    def read(self, name: str):
        assert name == FUSION_WEIGHTS
        return self.table


@pytest.fixture()
def settings(tmp_path):
    return load_config(
        [],
        [
            f"run.work_dir={tmp_path}",
            "score.weights={cf: 0.4, cooc: 0.1, text: 0.2, recent: 0.2, pop: 0.1}",
            "score.recent_sharpness=7.0",
        ],
    )


def test_without_a_score_run_the_configured_weights_are_used(settings):
    picked = picked_weights(_Warehouse(), settings)
    assert set(picked) == {"hybrid", "text"}
    assert picked["hybrid"] == {
        "weights": {"cf": 0.4, "cooc": 0.1, "text": 0.2, "recent": 0.2, "pop": 0.1, "next": 0.0},
        "sharpness": 7.0,
        "debias": 0.0,
    }
    assert picked["text"]["weights"] == BASELINE_WEIGHTS["text"]
    assert picked["text"]["sharpness"] == 7.0


def test_a_picked_row_replaces_its_model_only(spark, settings):
    row = {part: 0.0 for part in PARTS} | {"cooc": 0.7, "pop": 0.3}
    table = spark.createDataFrame(
        [{"model": "hybrid", **row, "recent_sharpness": None, "debias": 0.3}],
        "model string, cf double, cooc double, text double, recent double, pop double, "
        "recent_sharpness double, debias double",
    )
    picked = picked_weights(_Warehouse(table), settings)
    # A missing sharpness falls back to the configured one, a part the snapshot lacks (next) is
    # unweighted; the text row was not picked.
    assert picked["hybrid"] == {"weights": row, "sharpness": 7.0, "debias": 0.3}
    assert picked["text"]["weights"] == BASELINE_WEIGHTS["text"]
