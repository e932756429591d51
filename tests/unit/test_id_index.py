"""The logged ALS model scores real ids: id-index stages in front of ALS, saved and loaded."""

from __future__ import annotations

import math

from pyspark.ml import PipelineModel
from pyspark.sql import functions as F

from hybridrec.constants import ITEM_COL, USER_COL
from hybridrec.models import cf


def _fitted(spark, cfg):
    prefs = spark.createDataFrame(
        [
            ("ann", "apple", 3.0),
            ("ann", "pear", 1.0),
            ("bob", "apple", 2.0),
            ("bob", "plum", 4.0),
            ("cid", "pear", 5.0),
            ("cid", "plum", 1.0),
        ],
        [USER_COL, ITEM_COL, "preference"],
    )
    users = cf.index_ids(spark, prefs, USER_COL)
    items = cf.index_ids(spark, prefs, ITEM_COL)
    model = cf.fit(cf.indexed_preferences(prefs, users, items), cfg, {"rank": 2})
    return model, users, items


def test_saved_pipeline_scores_real_ids_as_als_scores_their_indices(spark, cfg, tmp_path):
    model, users, items = _fitted(spark, cfg)
    path = str(tmp_path / "als_model")
    cf.scoring_pipeline(model, users, items).save(path)
    loaded = PipelineModel.load(path)

    pairs = spark.createDataFrame(
        [("ann", "plum"), ("bob", "pear"), ("cid", "apple"), ("zed", "apple"), ("ann", "fig")],
        [USER_COL, ITEM_COL],
    )
    by_id = {
        (r[USER_COL], r[ITEM_COL]): r["prediction"]
        for r in loaded.transform(pairs).select(USER_COL, ITEM_COL, "prediction").collect()
    }
    expected = {
        (r[USER_COL], r[ITEM_COL]): r["prediction"]
        for r in model.transform(pairs.join(users, USER_COL).join(items, ITEM_COL)).collect()
    }
    assert len(expected) == 3
    for pair, score in expected.items():
        assert by_id[pair] == score
    # Ids the model never saw have no factors: no score (NaN, or the row dropped under
    # coldStartStrategy=drop) rather than someone else's.
    unknown = {pair: score for pair, score in by_id.items() if pair not in expected}
    assert set(unknown) <= {("zed", "apple"), ("ann", "fig")}
    assert all(math.isnan(score) for score in unknown.values())


def test_index_stage_keeps_its_columns_and_mapping_through_save(spark, cfg, tmp_path):
    model, users, items = _fitted(spark, cfg)
    path = str(tmp_path / "als_model")
    cf.scoring_pipeline(model, users, items).save(path)
    user_stage = PipelineModel.load(path).stages[0]
    assert (user_stage.getInputCol(), user_stage.getOutputCol()) == (USER_COL, f"{USER_COL}_idx")
    indexed = user_stage.transform(spark.createDataFrame([("bob",), ("nobody",)], [USER_COL]))
    got = dict(indexed.select(USER_COL, F.col(f"{USER_COL}_idx")).collect())
    assert got == {"bob": 1, "nobody": -1}


def test_the_model_carries_the_package_even_when_imported_from_the_code_zip(tmp_path):
    # A cluster driver imports hybridrec from the --py-files zip; MLflow copies only folders.
    import subprocess
    import sys

    from hybridrec.ops.code_archive import build_code_archive

    zipped = build_code_archive(tmp_path)
    script = (
        "import sys, pathlib; sys.path.insert(0, sys.argv[1]);"
        "import hybridrec, hybridrec.ops.tracking as t;"
        "assert '.zip' in hybridrec.__file__, hybridrec.__file__;"
        "out = t.copy_package(pathlib.Path(sys.argv[2]));"
        "print(sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(zipped), str(tmp_path / "copy" / "hybridrec")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    copied = done.stdout
    assert "'models/id_index.py'" in copied and "'conf/base.yaml'" in copied
    assert "__pycache__" not in copied
