"""One config system: ``conf/base.yaml`` holds every key and default; overlays and ``--set`` change
values. Types are checked against the defaults and unknown keys are rejected, naming the key and
where it came from."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

CONF_DIR_ENV = "HYBRIDREC_CONF_DIR"
BASE_FILE = "base.yaml"

# Sections whose keys are free-form (their values still have to be scalars of the right kind).
OPEN_MAPS = {
    "spark.conf",
    "als.event_weights",
    "source.generic.options",
    "source.generic.behaviour.columns",
    "source.generic.reviews.columns",
    "source.generic.items.columns",
}

CHOICES = {
    "source.kind": {"sample", "amazon", "movielens", "generic"},
    "ingest.split": {"leave_last_out"},
    "ingest.id_whitespace": {"reject", "trim"},
    "embed.device": {"auto", "cpu", "cuda"},
    "als.cold_start_strategy": {"drop", "nan"},
    "score.normalisation": {"zscore", "minmax", "rank"},
    "score.catalog": {"interacted", "all"},
    "score.tune_metric": {"ndcg", "hr"},
}


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and its origin."""


class Config(Mapping):
    """Read-only nested view of the resolved config: ``cfg.als.rank`` or ``cfg["als"]["rank"]``."""

    def __init__(self, data: Mapping[str, Any], sources: tuple[str, ...] = ()):
        self._data = data
        self.sources = sources

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return Config(value, self.sources) if isinstance(value, Mapping) else value

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(f"config has no key {key!r}") from exc

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self._data))

    def flat(self) -> dict[str, Any]:
        """Dotted keys to leaf values, for logging the resolved config as MLflow params."""
        return dict(_flatten(self._data))


def conf_dir() -> Path:
    return Path(os.environ.get(CONF_DIR_ENV, Path(__file__).resolve().parents[1] / "conf"))


def load_config(
    paths: Iterable[str | Path] = (),
    overrides: Iterable[str] = (),
    *,
    base: str | Path | None = None,
) -> Config:
    """Resolve base defaults, then each overlay file in order, then ``key=value`` overrides.

    Args:
        paths: YAML overlay files, applied in order.
        overrides: ``dotted.key=value`` strings; the value is parsed as YAML (``als.rank=32``).
        base: the defaults file; ``conf/base.yaml`` (or ``$HYBRIDREC_CONF_DIR/base.yaml``) if None.

    Returns:
        The validated config.

    Raises:
        ConfigError: on an unknown key, a wrong type, a bad choice or an unreadable file.
    """
    base_path = Path(base) if base else conf_dir() / BASE_FILE
    defaults = _read_yaml(base_path)
    resolved = copy.deepcopy(defaults)
    sources = [str(base_path)]
    for path in paths:
        if Path(path).resolve() == base_path.resolve():
            continue
        _merge(resolved, defaults, _read_yaml(Path(path)), origin=str(path), prefix="")
        sources.append(str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        nested: dict[str, Any] = {}
        cursor = nested
        parts = _override_path(key.strip())
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        _merge(resolved, defaults, nested, origin=f"--set {item}", prefix="")
        sources.append(f"--set {item}")
    for key, allowed in CHOICES.items():
        value = _lookup(resolved, key)
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r} is not one of {sorted(allowed)}")
    _check_values(resolved)
    return Config(resolved, tuple(sources))


def _override_path(dotted: str) -> list[str]:
    """Split a dotted key; inside an open map the rest is one key (``spark.conf.spark.x.y``)."""
    for open_map in OPEN_MAPS:
        if dotted.startswith(f"{open_map}.") and len(dotted) > len(open_map) + 1:
            return [*open_map.split("."), dotted[len(open_map) + 1 :]]
    return dotted.split(".")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _merge(target: dict, defaults: Any, update: Mapping, *, origin: str, prefix: str) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        open_map = prefix.rstrip(".") in OPEN_MAPS
        if not open_map and (not isinstance(defaults, Mapping) or key not in defaults):
            raise ConfigError(f"unknown config key {dotted!r} in {origin}")
        default = defaults.get(key) if isinstance(defaults, Mapping) else None
        if isinstance(default, Mapping) and dotted not in OPEN_MAPS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted!r} in {origin} must be a mapping, got {value!r}")
            _merge(target[key], default, value, origin=origin, prefix=f"{dotted}.")
            continue
        if dotted in OPEN_MAPS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted!r} in {origin} must be a mapping, got {value!r}")
            checked = {
                k: _coerce(f"{dotted}.{k}", None, v, origin, open_map=True)
                for k, v in value.items()
            }
            target[key] = {**target.get(key, {}), **checked}
            continue
        target[key] = _coerce(dotted, default, value, origin, open_map)


def _coerce(dotted: str, default: Any, value: Any, origin: str, open_map: bool) -> Any:
    if open_map:
        if isinstance(value, (Mapping, list)):
            raise ConfigError(f"{dotted!r} in {origin} must be a scalar, got {value!r}")
        return value
    if value is None:
        # null restores the default (which may itself be null: an optional path or size).
        return copy.deepcopy(default)
    if default is None:
        # A null default marks an optional scalar.
        if isinstance(value, (Mapping, list)):
            raise ConfigError(f"{dotted!r} in {origin} must be a scalar, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted!r} in {origin} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{dotted!r} in {origin} must be a list, got {value!r}")
        return value
    if type(value) is not type(default):
        raise ConfigError(
            f"{dotted!r} in {origin} must be {type(default).__name__}, "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def _check_values(cfg: dict[str, Any]) -> None:
    positive = ["als.rank", "als.max_iter", "score.k", "evaluate.k", "embed.batch_size"]
    positive += ["embed.max_length", "score.user_block_rows", "spark.arrow_batch_rows"]
    positive += ["cooc.neighbours", "cooc.history_items", "score.history_items"]
    positive += ["score.recent_half_life", "score.recent_sharpness", "score.cooc_half_life"]
    positive += ["cooc.time_scale_days", "embed.text_neighbours"]
    for key in positive:
        if _lookup(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {_lookup(cfg, key)!r}")
    weights = cfg["score"]["weights"]
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError(f"score.weights must be non-negative with a positive sum, got {weights}")
    sharpness = cfg["score"]["recent_sharpness_grid"]
    if not sharpness or any(
        isinstance(p, bool) or not isinstance(p, int | float) or p <= 0 for p in sharpness
    ):
        raise ConfigError(
            f"score.recent_sharpness_grid must be a non-empty list of positive numbers, "
            f"got {sharpness!r}"
        )
    for key, upper_closed in [
        ("score.weight_grid_step", True),
        ("evaluate.segment_fraction", True),
        ("evaluate.confidence", False),
    ]:
        value = _lookup(cfg, key)
        if not (0 < value <= 1 if upper_closed else 0 < value < 1):
            raise ConfigError(f"{key} must be in (0, 1{']' if upper_closed else ')'}, got {value}")
    source = cfg["source"]
    if source["kind"] == "amazon" and not source["amazon"]["reviews_path"]:
        raise ConfigError("source.kind is amazon but source.amazon.reviews_path is not set")
    if source["kind"] == "movielens" and not source["movielens"]["path"]:
        raise ConfigError("source.kind is movielens but source.movielens.path is not set")
    generic = source["generic"]
    if source["kind"] == "generic" and not (
        generic["behaviour"]["path"] or generic["reviews"]["path"]
    ):
        raise ConfigError(
            "source.kind is generic but neither source.generic.behaviour.path nor "
            "source.generic.reviews.path is set"
        )


def _lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = value[part]
    return value


def _flatten(data: Mapping[str, Any], prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
