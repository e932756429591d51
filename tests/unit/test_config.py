"""hybridrec.config: defaults, overlays in order, --set parsing, errors naming the culprit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybridrec.config import ConfigError, conf_dir, load_config
from udfs.topk import PARTS


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

    cfg = load_config([first, second], ["score.k=7"])

    assert cfg.als.rank == 24  # the later file wins
    assert cfg.als.reg_param == 0.5  # a key only the first file sets survives the second
    assert cfg.score.k == 7  # --set comes after every file
    assert cfg.als.max_iter == 10  # untouched default
    assert cfg.sources[1:] == (str(first), str(second), "--set score.k=7")


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
        "score.normalisation = 'foo' is not one of ['minmax', 'rank', 'zscore']"
    )


@pytest.mark.parametrize("override", ["score.k=0", "evaluate.k=-3", "als.rank=0"])
def test_non_positive_sizes_are_rejected(override):
    key, _, value = override.partition("=")

    with pytest.raises(ConfigError) as excinfo:
        load_config([], [override])

    assert str(excinfo.value) == f"{key} must be positive, got {value}"


def test_negative_fusion_weight_is_rejected():
    with pytest.raises(ConfigError, match="score.weights must be non-negative"):
        load_config([], ["score.weights.cf=-0.5"])


def test_all_zero_fusion_weights_are_rejected():
    zero = [f"score.weights.{part}=0" for part in PARTS]

    with pytest.raises(ConfigError, match="with a positive sum"):
        load_config([], zero)


@pytest.mark.parametrize("grid", ["[]", "[1.0, 0]", "[true]", "['x']"])
def test_recent_sharpness_grid_must_hold_positive_numbers(grid):
    with pytest.raises(ConfigError, match="score.recent_sharpness_grid must be a non-empty list"):
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
    with pytest.raises(ConfigError, match=f"{key} must be positive"):
        load_config([], [f"{key}={value}"])


def test_cooc_neighbours_must_be_positive():
    with pytest.raises(ConfigError, match="cooc.neighbours must be positive"):
        load_config([], ["cooc.neighbours=0"])


@pytest.mark.parametrize("step", ["0", "1.5"])
def test_weight_grid_step_outside_unit_interval_is_rejected(step):
    with pytest.raises(ConfigError, match=r"score.weight_grid_step must be in \(0, 1\]"):
        load_config([], [f"score.weight_grid_step={step}"])


@pytest.mark.parametrize(
    "setting, message",
    [
        ("evaluate.segment_fraction=0", r"evaluate.segment_fraction must be in \(0, 1\]"),
        ("evaluate.segment_fraction=1.2", r"evaluate.segment_fraction must be in \(0, 1\]"),
        ("evaluate.confidence=1", r"evaluate.confidence must be in \(0, 1\)"),
        ("evaluate.confidence=0", r"evaluate.confidence must be in \(0, 1\)"),
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

    assert str(excinfo.value) == "source.kind is amazon but source.amazon.reviews_path is not set"


def test_amazon_kind_with_reviews_path_loads():
    cfg = load_config(
        [conf_dir() / "amazon.yaml"], ["source.amazon.reviews_path=/data/Magazine_5.json.gz"]
    )

    assert cfg.source.kind == "amazon"
    assert cfg.source.amazon.reviews_path == "/data/Magazine_5.json.gz"
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
