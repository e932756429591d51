"""hybridrec.config: defaults, overlays in order, --set parsing, errors naming the culprit."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from hybridrec.config.loader import (
    ConfigError,
    check_run_id,
    check_stages,
    conf_dir,
    error_line,
    load_config,
)
from hybridrec.config.schema import LIST_RANGES, MAP_RANGES, OPEN_MAPS, OPTIONAL_TYPES, RANGES
from hybridrec.ops.runner import new_run_id
from hybridrec.ops.session import SHORT_JOB_JAVA_OPTIONS, SHORT_RUN_SPARK_CONF
from pipelines.end_to_end import STAGES
from udfs.ranking_kernel import PARTS

REPO = Path(__file__).resolve().parents[2]


def _overlay(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_defaults_come_from_base_yaml():
    cfg = load_config()

    assert cfg.als.rank == 32
    assert cfg.als.reg_param == 0.1
    assert cfg.als.implicit is True
    assert cfg.score.normalisation == "zscore"
    assert cfg["score"]["weights"].to_dict() == {
        "cf": 0.2,
        "cooc": 0.2,
        "text": 0.1,
        "recent": 0.5,
        "pop": 0.0,
        "next": 0.0,
    }
    assert cfg.cooc.time_scale_days == 30.0
    assert cfg.ingest.event_types == ["rating", "review", "click", "purchase"]
    assert cfg.run.warehouse_dir is None
    assert cfg.sources == (str(conf_dir() / "base.yaml"),)


def test_flat_gives_dotted_keys():
    flat = load_config().flat()

    assert flat["als.rank"] == 32
    assert flat["score.weights.recent"] == 0.5
    assert flat["spark.conf"] == {}


def test_overlays_apply_in_order_and_set_wins(tmp_path):
    first = _overlay(tmp_path, "first.yaml", "als:\n  rank: 16\n  reg_param: 0.5\n")
    second = _overlay(tmp_path, "second.yaml", "als:\n  rank: 24\nscore:\n  k: 5\n")

    cfg = load_config([first, second], ["score.k=7", "evaluate.k=7"])

    assert cfg.als.rank == 24  # the later file wins
    assert cfg.als.reg_param == 0.5  # a key only the first file sets survives the second
    assert cfg.score.k == 7  # --set comes after every file
    assert cfg.als.max_iter == 10  # untouched default
    assert cfg.sources[1:] == (str(first), str(second), "--set score.k=7", "--set evaluate.k=7")


def test_overlays_in_the_other_order_give_the_other_value(tmp_path):
    first = _overlay(tmp_path, "first.yaml", "als:\n  rank: 16\n")
    second = _overlay(tmp_path, "second.yaml", "als:\n  rank: 24\n")

    assert load_config([second, first]).als.rank == 16


def test_base_file_given_as_overlay_is_not_applied_twice():
    cfg = load_config([conf_dir() / "base.yaml"])

    assert cfg.sources == (str(conf_dir() / "base.yaml"),)


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        ("als.rank=64", "als", "rank", 64),
        ("als.implicit=false", "als", "implicit", False),
        ("als.nonnegative=true", "als", "nonnegative", True),
        ("als.reg_param=1", "als", "reg_param", 1.0),
        ("spark.app_name=my app", "spark", "app_name", "my app"),
        ("ingest.event_types=[click, view]", "ingest", "event_types", ["click", "view"]),
        ("run.warehouse_dir=s3a://bucket/wh", "run", "warehouse_dir", "s3a://bucket/wh"),
    ],
)
def test_set_override_is_parsed_as_yaml(override, section, key, expected):
    value = load_config([], [override])[section][key]

    assert value == expected
    assert type(value) is type(expected)


def test_set_int_on_a_float_key_becomes_float():
    value = load_config([], ["score.weights.cf=1"]).score.weights.cf

    assert value == 1.0
    assert isinstance(value, float)


def test_set_value_may_contain_equals_sign():
    cfg = load_config([], ["spark.app_name=a=b"])

    assert cfg.spark.app_name == "a=b"


@pytest.mark.parametrize("override", ["als.rank", "=5", " =5"])
def test_set_without_key_or_equals_is_rejected(override):
    with pytest.raises(ConfigError, match="is not of the form dotted.key=value"):
        load_config([], [override])


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    overlay = _overlay(tmp_path, "typo.yaml", "als:\n  rnak: 16\n")

    with pytest.raises(ConfigError) as excinfo:
        load_config([overlay])

    message = str(excinfo.value)
    assert "'als.rnak'" in message
    assert str(overlay) in message


def test_unknown_top_level_section_in_file_names_it(tmp_path):
    overlay = _overlay(tmp_path, "extra.yaml", "als:\n  rank: 16\ntraining:\n  epochs: 3\n")

    with pytest.raises(ConfigError, match=r"unknown config key 'training' in .*extra\.yaml"):
        load_config([overlay])


def test_unknown_key_in_set_names_the_override():
    with pytest.raises(ConfigError) as excinfo:
        load_config([], ["als.bogus=1"])

    assert str(excinfo.value) == "unknown config key 'als.bogus' in --set als.bogus=1"


def test_wrong_type_names_key_origin_and_types():
    with pytest.raises(ConfigError) as excinfo:
        load_config([], ["als.rank=abc"])

    assert str(excinfo.value) == "'als.rank' in --set als.rank=abc must be int, got str 'abc'"


def test_float_for_int_key_is_a_type_error():
    with pytest.raises(ConfigError, match="'als.rank' .* must be int, got float 3.5"):
        load_config([], ["als.rank=3.5"])


def test_wrong_type_in_file_names_the_file(tmp_path):
    overlay = _overlay(tmp_path, "bad.yaml", "score:\n  k: ten\n")

    with pytest.raises(ConfigError) as excinfo:
        load_config([overlay])

    assert str(excinfo.value) == f"'score.k' in {overlay} must be int, got str 'ten'"


def test_bool_key_rejects_an_int():
    with pytest.raises(ConfigError, match="'als.implicit' .* must be true or false, got 1"):
        load_config([], ["als.implicit=1"])


def test_list_key_rejects_a_scalar():
    with pytest.raises(ConfigError, match="'ingest.event_types' .* must be a list, got 'click'"):
        load_config([], ["ingest.event_types=click"])


def test_section_replaced_by_scalar_is_rejected():
    with pytest.raises(ConfigError, match="'als' in --set als=3 must be a mapping, got 3"):
        load_config([], ["als=3"])


def test_bad_choice_names_key_and_allowed_values():
    with pytest.raises(ConfigError) as excinfo:
        load_config([], ["score.normalisation=foo"])

    assert str(excinfo.value) == (
        "score.normalisation = 'foo' (from --set score.normalisation=foo) "
        "is not one of ['minmax', 'rank', 'zscore']"
    )


@pytest.mark.parametrize(
    ("override", "bound"),
    [("score.k=0", ">= 1"), ("evaluate.k=-3", ">= 1"), ("als.rank=0", "in [1, ")],
)
def test_non_positive_sizes_are_rejected(override, bound):
    key, _, value = override.partition("=")

    with pytest.raises(ConfigError) as excinfo:
        load_config([], [override])

    assert str(excinfo.value).startswith(f"{key} = {value} (from --set {override}) must be {bound}")


def test_negative_fusion_weight_is_rejected():
    with pytest.raises(ConfigError, match=r"score.weights.cf = -0.5 \(from .*\) must be >= 0"):
        load_config([], ["score.weights.cf=-0.5"])


def test_all_zero_fusion_weights_are_rejected():
    zero = [f"score.weights.{part}=0" for part in PARTS]

    with pytest.raises(ConfigError, match=r"score.weights = .* must have a positive sum"):
        load_config([], zero)


@pytest.mark.parametrize("grid", ["[]", "[1.0, 0]", "[true]", "['x']"])
def test_recent_sharpness_grid_must_hold_positive_numbers(grid):
    with pytest.raises(
        ConfigError,
        match=r"score.recent_sharpness_grid = .* must be a non-empty list of numbers > 0",
    ):
        load_config([], [f"score.recent_sharpness_grid={grid}"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("score.recent_sharpness", "0"),
        ("score.cooc_half_life", "-1"),
        ("cooc.time_scale_days", "0"),
    ],
)
def test_kernel_scales_must_be_positive(key, value):
    with pytest.raises(ConfigError, match=rf"{key} = .* must be > 0"):
        load_config([], [f"{key}={value}"])


def test_cooc_neighbours_must_be_positive():
    with pytest.raises(ConfigError, match="cooc.neighbours = 0 .* must be >= 1"):
        load_config([], ["cooc.neighbours=0"])


@pytest.mark.parametrize("step", ["0", "1.5"])
def test_weight_grid_step_outside_unit_interval_is_rejected(step):
    with pytest.raises(ConfigError, match=r"score.weight_grid_step = .* must be in \(0, 1\]"):
        load_config([], [f"score.weight_grid_step={step}"])


@pytest.mark.parametrize(
    "setting, message",
    [
        ("evaluate.segment_fraction=0", r"evaluate.segment_fraction = .* must be in \(0, 1\]"),
        ("evaluate.segment_fraction=1.2", r"evaluate.segment_fraction = .* must be in \(0, 1\]"),
        ("evaluate.confidence=1", r"evaluate.confidence = .* must be in \(0, 1\)"),
        ("evaluate.confidence=0", r"evaluate.confidence = .* must be in \(0, 1\)"),
    ],
)
def test_evaluate_shares_outside_their_range_are_rejected(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], [setting])


def test_whole_segment_and_high_confidence_are_accepted():
    cfg = load_config([], ["evaluate.segment_fraction=1", "evaluate.confidence=0.99"])
    assert (cfg.evaluate.segment_fraction, cfg.evaluate.confidence) == (1.0, 0.99)


def test_amazon_kind_without_reviews_path_is_rejected():
    with pytest.raises(ConfigError) as excinfo:
        load_config([conf_dir() / "amazon.yaml"])

    assert str(excinfo.value) == (
        f"source.kind = 'amazon' (from {conf_dir() / 'amazon.yaml'}) "
        "needs source.amazon.reviews_path to be set"
    )


def test_amazon_kind_with_reviews_path_loads(tmp_path):
    reviews = tmp_path / "Magazine_5.json.gz"
    reviews.write_bytes(b"")

    cfg = load_config([conf_dir() / "amazon.yaml"], [f"source.amazon.reviews_path={reviews}"])

    assert cfg.source.kind == "amazon"
    assert cfg.source.amazon.reviews_path == str(reviews)
    assert cfg.ingest.event_types == ["review"]


def test_missing_overlay_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match=re.escape(f"config file {missing} does not exist")):
        load_config([missing])


def test_overlay_that_is_not_a_mapping_is_rejected(tmp_path):
    overlay = _overlay(tmp_path, "list.yaml", "- a\n- b\n")

    with pytest.raises(ConfigError, match="must hold a mapping at the top level"):
        load_config([overlay])


def test_spark_conf_accepts_arbitrary_keys(tmp_path):
    overlay = _overlay(tmp_path, "spark.yaml", "spark:\n  conf:\n    spark.executor.memory: 8g\n")

    cfg = load_config([overlay], ["spark.conf={spark.sql.adaptive.enabled: false}"])

    assert cfg.spark.conf.to_dict() == {
        "spark.executor.memory": "8g",
        "spark.sql.adaptive.enabled": False,
    }


def test_event_weights_accept_a_new_event_and_keep_the_others():
    cfg = load_config([], ["als.event_weights.view=0.5"])

    assert cfg.als.event_weights.to_dict() == {"click": 1.0, "purchase": 3.0, "view": 0.5}


def test_open_map_value_must_be_a_scalar():
    with pytest.raises(ConfigError, match="als.event_weights.click"):
        load_config([], ["als.event_weights.click=[1, 2]"])


def test_dotted_set_into_spark_conf_never_leaves_a_nested_value():
    cfg = load_config([], ["spark.conf.spark.executor.memory=8g"])
    assert cfg.spark.conf.to_dict() == {"spark.executor.memory": "8g"}


def test_null_override_restores_the_default():
    assert load_config([], ["spark.app_name=null"]).spark.app_name == "hybridrec"


def test_null_for_a_required_size_restores_its_default():
    assert load_config([], ["als.rank=null"]).als.rank == 32


def test_config_is_read_only_mapping():
    cfg = load_config()

    with pytest.raises(AttributeError, match="config has no key 'nope'"):
        _ = cfg.als.nope
    assert "rank" in cfg.als
    assert len(cfg.score.weights) == len(PARTS)


# --- every setting checked at load time: key, value and origin named on one line ----------------


def _error(overrides: list[str], paths: list[Path] | None = None) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load_config(paths or [], overrides)
    return str(excinfo.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        # The cases that used to get past the loader and fail (or silently misbehave) in Spark.
        ("als.grid.rank=[]", "als.grid.rank"),
        ("als.event_weights.click=abc", "als.event_weights.click"),
        ("als.reg_param=-1", "als.reg_param"),
        ("als.alpha=-5", "als.alpha"),
        ("ingest.min_rating=6", "ingest.min_rating"),
        ("run.database=bad name", "run.database"),
        # als
        ("als.alpha=0", "als.alpha"),
        ("als.max_iter=0", "als.max_iter"),
        ("als.checkpoint_interval=0", "als.checkpoint_interval"),
        ("als.num_blocks=0", "als.num_blocks"),
        ("als.num_blocks=abc", "als.num_blocks"),
        ("als.rank=3000000000", "als.rank"),
        ("als.grid.rank=[0, 8]", "als.grid.rank"),
        ("als.grid.rank=[8.5]", "als.grid.rank"),
        ("als.grid.reg_param=[]", "als.grid.reg_param"),
        ("als.grid.reg_param=[-0.1]", "als.grid.reg_param"),
        ("als.grid.alpha=[]", "als.grid.alpha"),
        ("als.grid.alpha=[0]", "als.grid.alpha"),
        ("als.event_weights.view=-1", "als.event_weights.view"),
        ("als.event_weights.click=true", "als.event_weights.click"),
        ("als.event_weights.click=.nan", "als.event_weights.click"),
        # ingest
        ("ingest.max_rating=1", "ingest.max_rating"),
        ("ingest.min_rating=.nan", "ingest.min_rating"),
        ("ingest.event_types=[]", "ingest.event_types"),
        ("ingest.event_types=['']", "ingest.event_types"),
        ("ingest.event_types=[click, click]", "ingest.event_types"),
        ("ingest.min_event_ts=yesterday", "ingest.min_event_ts"),
        ("ingest.min_event_ts=1899-12-31", "ingest.min_event_ts"),
        ("ingest.min_event_ts=1900-01-01T00:00:00Z", "ingest.min_event_ts"),
        ("ingest.min_event_ts=2999-01-01", "ingest.min_event_ts"),
        ("ingest.id_whitespace=strip", "ingest.id_whitespace"),
        # run
        ("run.database=1db", "run.database"),
        ("run.database=db;drop", "run.database"),
        ("run.keep_runs=0", "run.keep_runs"),
        ("run.lock_wait_seconds=-1", "run.lock_wait_seconds"),
        ("run.lock_stale_seconds=0", "run.lock_stale_seconds"),
        ("run.metastore=localhost:9083", "run.metastore"),
        ("run.work_dir=''", "run.work_dir"),
        # spark
        ("spark.shuffle_partitions=0", "spark.shuffle_partitions"),
        ("spark.arrow_batch_rows=0", "spark.arrow_batch_rows"),
        ("spark.app_name=''", "spark.app_name"),
        ("spark.app_name='  '", "spark.app_name"),
        ("spark.master=''", "spark.master"),
        ("spark.driver_memory=lots", "spark.driver_memory"),
        ("spark.conf.spark.executor.memory=null", "spark.conf.spark.executor.memory"),
        # source
        ("source.sample.n_users=0", "source.sample.n_users"),
        ("source.sample.n_items=0", "source.sample.n_items"),
        ("source.sample.n_topics=0", "source.sample.n_topics"),
        ("source.sample.events_per_user=0", "source.sample.events_per_user"),
        ("source.sample.review_fraction=1.5", "source.sample.review_fraction"),
        ("source.sample.orphan_review_fraction=-0.1", "source.sample.orphan_review_fraction"),
        ("source.sample.bad_row_fraction=2", "source.sample.bad_row_fraction"),
        ("source.sample.seed=-1", "source.sample.seed"),
        ("source.generic.format=''", "source.generic.format"),
        ("source.generic.behaviour.columns.user_id=''", "source.generic.behaviour.columns.user_id"),
        # embed
        ("embed.batch_size=0", "embed.batch_size"),
        ("embed.max_length=0", "embed.max_length"),
        ("embed.partitions=0", "embed.partitions"),
        ("embed.item_meta_weight=-1", "embed.item_meta_weight"),
        ("embed.recency_half_life_days=0", "embed.recency_half_life_days"),
        ("embed.recency_half_life_days=soon", "embed.recency_half_life_days"),
        ("embed.text_neighbours=0", "embed.text_neighbours"),
        ("embed.model_path=/nonexistent", "embed.model_path"),
        ("embed.model_id=''", "embed.model_id"),
        # cooc, score, evaluate
        ("cooc.history_items=0", "cooc.history_items"),
        ("score.recent_half_life=0", "score.recent_half_life"),
        ("score.user_block_rows=0", "score.user_block_rows"),
        ("score.history_items=0", "score.history_items"),
        ("evaluate.k=11", "evaluate.k"),
        # mlflow, privacy
        ("mlflow.tracking_uri=localhost:5000", "mlflow.tracking_uri"),
        ("mlflow.experiment=''", "mlflow.experiment"),
        ("privacy.key_env=not a name", "privacy.key_env"),
        ("privacy.key_env=1KEY", "privacy.key_env"),
    ],
)
def test_bad_value_names_key_and_its_set(override, key):
    message = _error([override])

    assert key in message
    assert f"--set {override}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "override",
    [
        "als.reg_param=0",
        "als.alpha=0.001",
        "als.max_iter=1",
        "als.checkpoint_interval=1",
        "als.num_blocks=1",
        "als.num_blocks=null",
        "als.seed=-1",
        "als.grid.rank=[1]",
        "als.grid.reg_param=[0]",
        "als.grid.alpha=[0.01, 40]",
        "als.event_weights.click=0",
        "als.event_weights.view=2",
        "ingest.min_rating=4.9",
        "ingest.min_rating=-1",
        "ingest.min_event_ts=1900-01-02",
        "ingest.event_types=[click]",
        "run.database=_x",
        "run.database=Hybrid_rec2",
        "run.keep_runs=1",
        "run.lock_wait_seconds=0",
        "run.lock_stale_seconds=1",
        "run.metastore=thrift://metastore:9083",
        "run.metastore=jdbc:mysql://db/hive",
        "spark.shuffle_partitions=1",
        "spark.driver_memory=512m",
        "spark.driver_memory='4096'",
        "spark.driver_memory=2GB",
        "source.sample.n_users=1",
        "source.sample.review_fraction=0",
        "source.sample.review_fraction=1",
        "source.sample.bad_row_fraction=0",
        "source.sample.seed=0",
        "source.generic.options.nullValue=''",
        "embed.item_meta_weight=0",
        "embed.partitions=1",
        "embed.recency_half_life_days=0.5",
        "embed.model_path=hdfs://models/bert",
        "evaluate.k=1",
        "mlflow.tracking_uri=http://mlflow:5000",
        "mlflow.tracking_uri=sqlite:///tmp/mlflow.db",
        "mlflow.tracking_uri=file:/tmp/mlruns",
        "mlflow.tracking_uri=./mlruns",
        "mlflow.tracking_uri=databricks",
        "privacy.key_env=MY_KEY_2",
    ],
)
def test_edge_values_are_accepted(override):
    load_config([], [override])


def test_every_numeric_setting_of_base_yaml_has_a_range():
    defaults = yaml.safe_load((conf_dir() / "base.yaml").read_text())
    numeric, lists, optional = set(), set(), set()

    def walk(data, prefix=""):
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            if dotted in OPEN_MAPS or dotted in MAP_RANGES:
                continue
            if isinstance(value, dict):
                walk(value, f"{dotted}.")
            elif value is None:
                optional.add(dotted)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                numeric.add(dotted)
            elif isinstance(value, list) and all(isinstance(v, int | float) for v in value):
                lists.add(dotted)

    walk(defaults)

    assert numeric <= set(RANGES)
    assert lists == set(LIST_RANGES)
    assert optional == set(OPTIONAL_TYPES)
    assert {k for k, kind in OPTIONAL_TYPES.items() if kind is not str} <= set(RANGES)
    assert set(RANGES) <= numeric | optional  # no range for a key base.yaml lost


def test_range_error_names_value_and_set():
    message = _error(["als.reg_param=-1"])

    assert message == "als.reg_param = -1.0 (from --set als.reg_param=-1) must be >= 0"


def test_error_names_the_last_file_that_set_the_key(tmp_path):
    first = _overlay(tmp_path, "first.yaml", "als:\n  alpha: -1.0\n")
    second = _overlay(tmp_path, "second.yaml", "als:\n  alpha: -2.0\n  rank: 8\n")

    message = _error([], [first, second])

    assert message == f"als.alpha = -2.0 (from {second}) must be > 0"


def test_key_a_later_set_leaves_alone_keeps_its_file(tmp_path):
    overlay = _overlay(tmp_path, "rating.yaml", "ingest:\n  max_rating: 0.5\n")

    message = _error(["ingest.min_rating=1"], [overlay])

    assert message == (
        "ingest.min_rating = 1.0 (from --set ingest.min_rating=1) must be < "
        f"ingest.max_rating = 0.5 (from {overlay})"
    )


def test_default_value_is_blamed_on_base_yaml(tmp_path):
    overlay = _overlay(tmp_path, "rating.yaml", "ingest:\n  max_rating: 0.5\n")

    message = _error([], [overlay])

    assert f"ingest.min_rating = 1.0 (from {conf_dir() / 'base.yaml'})" in message
    assert f"ingest.max_rating = 0.5 (from {overlay})" in message


def test_event_weight_entry_from_a_file_is_named_with_the_file(tmp_path):
    overlay = _overlay(tmp_path, "weights.yaml", "als:\n  event_weights:\n    view: abc\n")

    message = _error([], [overlay])

    assert message == f"als.event_weights.view = 'abc' (from {overlay}) must be a number >= 0"


def test_open_map_key_must_be_a_name(tmp_path):
    overlay = _overlay(tmp_path, "weights.yaml", "als:\n  event_weights:\n    1: 2.0\n")

    assert "'als.event_weights'" in _error([], [overlay])


def test_newline_in_a_value_is_escaped_to_keep_one_line():
    message = _error(['run.database="bad\\nname"'])

    assert "\n" not in message
    assert "run.database = 'bad\\nname'" in message


def test_error_line_is_one_line():
    assert error_line(ConfigError("a\nb\r\tc")) == "hybridrec: config error: a\\nb\\r\\tc"


def test_set_value_that_is_not_yaml_names_the_key():
    message = _error(["als.rank=[1, 2"])

    assert message.startswith("'als.rank' in --set als.rank=[1, 2: the value is not valid YAML")
    assert "\n" not in message


def test_file_that_is_not_yaml_is_one_line(tmp_path):
    overlay = _overlay(tmp_path, "broken.yaml", "als:\n  rank: [1, 2\n")

    message = _error([], [overlay])

    assert message.startswith(f"config file {overlay} is not valid YAML")
    assert "\n" not in message


def test_grid_values_become_floats_where_the_scalar_is_a_float():
    cfg = load_config([], ["als.grid.reg_param=[0, 1]", "als.grid.rank=[4, 8]"])

    assert cfg.als.grid.reg_param == [0.0, 1.0]
    assert all(isinstance(v, float) for v in cfg.als.grid.reg_param)
    assert cfg.als.grid.rank == [4, 8]


# --- min_event_ts: any ISO-8601 form in, one UTC ISO string out --------------------------------


@pytest.mark.parametrize(
    ("override", "stored"),
    [
        ("ingest.min_event_ts=2000-01-01", "2000-01-01T00:00:00Z"),  # YAML: a date
        ("ingest.min_event_ts=2000-01-01T00:00:00Z", "2000-01-01T00:00:00Z"),  # YAML: a datetime
        ("ingest.min_event_ts='2000-01-01T05:30:00+02:00'", "2000-01-01T03:30:00Z"),
        ("ingest.min_event_ts='2000-01-01 10:00'", "2000-01-01T10:00:00Z"),  # naive: UTC
        ("ingest.min_event_ts='1990-01-01T00:00:00Z'", "1990-01-01T00:00:00Z"),
    ],
)
def test_min_event_ts_is_stored_as_a_utc_iso_string(override, stored):
    assert load_config([], [override]).ingest.min_event_ts == stored


def test_min_event_ts_unquoted_in_a_file_is_accepted(tmp_path):
    overlay = _overlay(tmp_path, "ts.yaml", "ingest:\n  min_event_ts: 2005-06-01\n")

    assert load_config([overlay]).ingest.min_event_ts == "2005-06-01T00:00:00Z"


def test_min_event_ts_default_is_kept():
    assert load_config().ingest.min_event_ts == "1990-01-01T00:00:00Z"


def test_min_event_ts_in_the_future_is_rejected():
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=2)).date().isoformat()

    assert "must not be in the future" in _error([f"ingest.min_event_ts={tomorrow}"])


# --- paths: local ones must exist, relative to the working directory; URIs are left alone ------


def _model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_model_path_to_a_model_folder_is_accepted(tmp_path):
    model = _model_folder(tmp_path / "bert")

    assert load_config([], [f"embed.model_path={model}"]).embed.model_path == str(model)


def test_model_path_without_config_json_is_rejected(tmp_path):
    message = _error([f"embed.model_path={tmp_path}"])

    assert message == (
        f"embed.model_path = '{tmp_path}' (from --set embed.model_path={tmp_path}) "
        "is not a local model folder (no config.json in it)"
    )


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _model_folder(tmp_path / "models" / "bert")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reviews.json").write_text("")

    cfg = load_config(
        [conf_dir() / "amazon.yaml"],
        ["embed.model_path=models/bert", "source.amazon.reviews_path=data/reviews.json"],
    )

    assert cfg.source.amazon.reviews_path == "data/reviews.json"
    assert "models/nope" in _error(["embed.model_path=models/nope"])


@pytest.mark.parametrize(
    ("conf", "key"),
    [
        ("amazon.yaml", "source.amazon.reviews_path"),
        ("movielens.yaml", "source.movielens.path"),
        (None, "source.generic.behaviour.path"),
        (None, "source.generic.reviews.path"),
    ],
)
def test_missing_local_source_path_is_rejected(tmp_path, conf, key):
    paths = [conf_dir() / conf] if conf else []
    overrides = [] if conf else ["source.kind=generic"]
    missing = tmp_path / "nope"

    message = _error([*overrides, f"{key}={missing}"], paths)

    assert message.startswith(f"{key} = '{missing}' (from --set {key}={missing}) does not exist")


def test_missing_optional_source_path_is_rejected(tmp_path):
    reviews = tmp_path / "reviews.json"
    reviews.write_text("")

    message = _error(
        [f"source.amazon.reviews_path={reviews}", f"source.amazon.meta_path={tmp_path}/meta.json"],
        [conf_dir() / "amazon.yaml"],
    )

    assert message.startswith("source.amazon.meta_path = ")


def test_file_uri_is_checked_like_a_path(tmp_path):
    message = _error(
        [f"source.amazon.reviews_path=file://{tmp_path}/nope.json"], [conf_dir() / "amazon.yaml"]
    )

    assert message.startswith("source.amazon.reviews_path = ")
    reviews = tmp_path / "reviews.json"
    reviews.write_text("")
    load_config([conf_dir() / "amazon.yaml"], [f"source.amazon.reviews_path=file://{reviews}"])


@pytest.mark.parametrize("uri", ["hdfs://nn/data/reviews.json", "s3a://bucket/reviews.json.gz"])
def test_remote_source_paths_are_not_checked(uri):
    cfg = load_config([conf_dir() / "amazon.yaml"], [f"source.amazon.reviews_path={uri}"])

    assert cfg.source.amazon.reviews_path == uri


def test_glob_source_path_needs_only_its_folder(tmp_path):
    cfg = load_config(
        [],
        ["source.kind=generic", f"source.generic.behaviour.path={tmp_path}/part-*.parquet"],
    )

    assert cfg.source.generic.behaviour.path.endswith("part-*.parquet")
    assert "source.generic.behaviour.path" in _error(
        ["source.kind=generic", f"source.generic.behaviour.path={tmp_path}/nope/*.parquet"]
    )


def test_paths_of_another_source_kind_are_not_checked():
    cfg = load_config([], ["source.amazon.reviews_path=/nonexistent/reviews.json"])

    assert cfg.source.kind == "sample"


def test_work_dir_holding_a_quote_is_accepted(tmp_path):
    work = tmp_path / "it's here"

    cfg = load_config(["conf/local.yaml"], [f"run.work_dir={work}"])

    assert cfg.run.work_dir == str(work)


def test_work_dir_that_is_a_file_is_rejected(tmp_path):
    a_file = tmp_path / "work"
    a_file.write_text("")

    assert _error([f"run.work_dir={a_file}"]).endswith("is a file, not a folder")


# --- privacy: the key's variable must be set; its value never shows ----------------------------


def test_pseudonymising_without_the_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("HYBRIDREC_PSEUDONYM_KEY", raising=False)

    message = _error(["privacy.pseudonymise_user_ids=true"])

    assert message.startswith("privacy.pseudonymise_user_ids = True")
    assert "HYBRIDREC_PSEUDONYM_KEY" in message


def test_pseudonymising_with_a_blank_key_is_rejected(monkeypatch):
    monkeypatch.setenv("MY_KEY", "   ")

    message = _error(["privacy.pseudonymise_user_ids=true", "privacy.key_env=MY_KEY"])

    assert "MY_KEY" in message
    assert "(privacy.key_env, from --set privacy.key_env=MY_KEY)" in message


def test_pseudonymising_with_the_key_set_loads_and_never_shows_it(monkeypatch):
    monkeypatch.setenv("MY_KEY", "top-secret-value")
    settings = ["privacy.pseudonymise_user_ids=true", "privacy.key_env=MY_KEY"]

    cfg = load_config([], settings)

    assert cfg.privacy.key_env == "MY_KEY"
    assert "top-secret-value" not in repr(cfg.flat())
    assert "top-secret-value" not in _error([*settings, "als.alpha=-5"])


# --- command-line arguments: stages and run id -------------------------------------------------


def test_no_stages_means_all_in_order():
    assert check_stages(None, list(STAGES)) == [
        "ingest",
        "embed",
        "topics",
        "als",
        "score",
        "evaluate",
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("score,evaluate", ["score", "evaluate"]),
        (["als"], ["als"]),
        ("ingest, embed", ["ingest", "embed"]),
    ],
)
def test_known_stages_are_kept_in_the_order_given(given, expected):
    assert check_stages(given, list(STAGES)) == expected


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ("ingest,scor", "'scor'"),
        ("INGEST", "'INGEST'"),
        ("", "empty stage name"),
        ("ingest,,als", "empty stage name"),
        ("als,als", "'als' twice"),
    ],
)
def test_bad_stages_name_the_option_and_the_stage(given, named):
    with pytest.raises(ConfigError) as excinfo:
        check_stages(given, list(STAGES))

    message = str(excinfo.value)
    assert message.startswith(f"--stages {given!r}")
    assert named in message


def test_unknown_stage_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"did you mean 'score'\?"):
        check_stages("scor", list(STAGES))


@pytest.mark.parametrize(
    "run_id", ["R1", "e2e-test-run", "a.b_c-1", "x" * 100, "20260101T000000-abc123"]
)
def test_usable_run_ids_are_accepted(run_id):
    assert check_run_id(run_id) == run_id


def test_generated_run_id_is_usable():
    run_id = new_run_id()

    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id", ["a b", "", ".hidden", "../x", "a/b", "x" * 101, "a'b", "run\n", "-x", "r=1"]
)
def test_unusable_run_ids_are_rejected(run_id):
    with pytest.raises(ConfigError) as excinfo:
        check_run_id(run_id)

    message = str(excinfo.value)
    assert message.startswith("--run-id ")
    assert "\n" not in message


# --- an empty value is no value: an unset variable or template fails, never restores a default --

OPEN_HINT = "give a value ('' for empty text)"


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("run.work_dir=", "run.work_dir", "give a value (str), or leave the --set out"),
        ("als.rank=", "als.rank", "give a value (int), or leave the --set out"),
        ("als.rank=  ", "als.rank", "give a value (int), or leave the --set out"),
        ("als.implicit=", "als.implicit", "give a value (bool), or leave the --set out"),
        ("run.metastore=", "run.metastore", "give a value (str), or null to leave it unset"),
        ("als.num_blocks=", "als.num_blocks", "give a value (int), or null to leave it unset"),
        ("ingest.event_types=", "ingest.event_types", "give a list"),
        ("als.grid=", "als.grid", "give a mapping"),
        ("spark.conf=", "spark.conf", "give a mapping"),
        ("spark.conf.spark.executor.memory=", "spark.conf.spark.executor.memory", OPEN_HINT),
        ("source.generic.options.nullValue=", "source.generic.options.nullValue", OPEN_HINT),
        ("als.event_weights.view=", "als.event_weights.view", "give a number"),
        ("score.weights.cf=", "score.weights.cf", "give a value (float), or leave the --set out"),
        (
            "source.generic.items.columns.title=",
            "source.generic.items.columns.title",
            "give a column name",
        ),
    ],
)
def test_empty_set_value_is_an_error_naming_the_key_and_the_set(override, key, hint):
    message = _error([override])

    assert (
        message == f"'{key}' in --set {override} is empty (an unset variable or template?): {hint}"
    )


def test_empty_set_value_does_not_undo_an_overlay(tmp_path):
    overlay = _overlay(tmp_path, "prod.yaml", f"run:\n  work_dir: {tmp_path / 'hr'}\n")

    message = _error(["run.work_dir="], [overlay])

    assert message.startswith("'run.work_dir' in --set run.work_dir= is empty")


def test_empty_set_value_of_an_unknown_key_names_it_unknown():
    assert _error(["als.rnak="]) == "unknown config key 'als.rnak' in --set als.rnak="


@pytest.mark.parametrize("key", sorted(OPTIONAL_TYPES))
@pytest.mark.parametrize("null", ["null", "~", "Null"])
def test_explicit_null_for_a_nullable_key_is_accepted(key, null):
    section, *rest = key.split(".")
    value = load_config([], [f"{key}={null}"])[section]
    for part in rest:
        value = value[part]

    assert value is None


def test_explicit_null_for_a_nullable_key_unsets_what_an_overlay_set(tmp_path):
    overlay = _overlay(tmp_path, "hive.yaml", "run:\n  metastore: thrift://hive:9083\n")

    assert load_config([overlay], ["run.metastore=null"]).run.metastore is None


def _base_yaml_lines() -> dict[str, str]:
    """Dotted key -> the rest of its line in base.yaml (value and comment)."""
    keys, path = {}, []
    for line in (conf_dir() / "base.yaml").read_text().splitlines():
        match = re.match(r"( *)(\w+):(.*)", line)
        if match:
            path[len(match[1]) // 2 :] = [match[2]]
            keys[".".join(path)] = match[3]
    return keys


def test_base_yaml_says_what_null_means_for_every_nullable_key():
    lines = _base_yaml_lines()

    unexplained = {k for k in OPTIONAL_TYPES if not re.match(r" null +# null: ", lines[k])}

    assert unexplained == set()


# --- a key twice in one mapping: PyYAML would keep the last silently ---------------------------


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("als:\n  rank: 16\n  reg_param: 0.5\n  rank: 24\n", "als.rank", 4, 2),
        ("als:\n  rank: 16\nscore:\n  k: 5\nals:\n  max_iter: 3\n", "als", 5, 1),
        (
            "score:\n  candidates:\n    als: 10\n    text: 5\n    als: 20\n",
            "score.candidates.als",
            5,
            3,
        ),
        ("spark:\n  conf:\n    spark.x: '1'\n    spark.x: '2'\n", "spark.conf.spark.x", 4, 3),
        ("als:\n  event_weights: {click: 1, click: 2}\n", "als.event_weights.click", 2, 2),
    ],
)
def test_duplicate_key_in_an_overlay_names_file_key_and_line(tmp_path, text, key, line, first):
    overlay = _overlay(tmp_path, "dup.yaml", text)

    message = _error([], [overlay])

    assert message == (
        f"config file {overlay} line {line}: key '{key}' is given twice (first at line {first}); "
        "YAML would keep only the last"
    )


def test_duplicate_key_in_the_base_file_is_refused(tmp_path):
    text = (conf_dir() / "base.yaml").read_text().replace("  rank: 32\n", "  rank: 32\n  rank: 8\n")
    base = _overlay(tmp_path, "base.yaml", text)

    with pytest.raises(
        ConfigError, match=rf"config file {re.escape(str(base))} line \d+: key 'als.rank'"
    ):
        load_config(base=base)


def test_duplicate_key_in_a_set_value_is_refused():
    message = _error(["spark.conf={spark.x: '1', spark.x: '2'}"])

    assert message.startswith("'spark.conf' in --set spark.conf={spark.x: '1', spark.x: '2'}: ")
    assert "duplicate key 'spark.x'" in message


def test_same_key_in_two_mappings_is_no_duplicate(tmp_path):
    overlay = _overlay(tmp_path, "ok.yaml", "als:\n  seed: 1\nsource:\n  sample:\n    seed: 2\n")

    cfg = load_config([overlay])

    assert (cfg.als.seed, cfg.source.sample.seed) == (1, 2)


def test_merge_key_and_alias_are_no_duplicates(tmp_path):
    text = (
        "als:\n  grid: {rank: &ranks [8, 16]}\n"
        "evaluate:\n  ease: {<<: {max_items: 5}, max_items: 7}\n"
        "  item_knn: {neighbours_grid: *ranks}\n"
    )

    cfg = load_config([_overlay(tmp_path, "anchors.yaml", text)])

    assert cfg.evaluate.ease.max_items == 7  # a merged key given again locally overrides it
    assert cfg.evaluate.item_knn.neighbours_grid == [8, 16]


@pytest.mark.parametrize(
    "name", sorted(p.name for p in conf_dir().iterdir() if p.name.endswith(".yaml"))
)
def test_every_shipped_conf_file_loads(name):
    # Remote paths are not checked, so the overlays that need a data set load as they ship.
    remote = ["source.amazon.reviews_path=hdfs://nn/r.json", "source.movielens.path=hdfs://nn/ml"]

    load_config([conf_dir() / name], remote)


def test_the_quick_profile_and_the_suites_sessions_take_the_short_run_settings(spark):
    quick = yaml.safe_load((REPO / "conf" / "quick.yaml").read_text(encoding="utf-8"))
    assert quick["spark"]["conf"] == SHORT_RUN_SPARK_CONF
    assert SHORT_RUN_SPARK_CONF["spark.driver.extraJavaOptions"] == SHORT_JOB_JAVA_OPTIONS
    # What the JVM was started with: the options reached it, split into two arguments.
    runtime = spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    arguments = list(runtime.getInputArguments())
    assert set(SHORT_JOB_JAVA_OPTIONS.split()) <= set(arguments), arguments
    assert spark.conf.get("spark.sql.codegen.wholeStage").lower() == "false"
