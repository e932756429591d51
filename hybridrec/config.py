"""One config system: ``conf/base.yaml`` holds every key and default; overlays and ``--set`` change
values. Every value is checked when the config is loaded (type, choice, range, paths, identifiers,
the environment it needs), so a wrong setting fails at start, before Spark, as one line naming the
key and the file or ``--set`` that set it."""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlparse

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

# A null default marks an optional setting; when set, it must be of this type.
OPTIONAL_TYPES: dict[str, type] = {
    "run.warehouse_dir": str,
    "run.checkpoint_dir": str,
    "run.metastore": str,
    "source.amazon.reviews_path": str,
    "source.amazon.meta_path": str,
    "source.movielens.path": str,
    "source.generic.behaviour.path": str,
    "source.generic.reviews.path": str,
    "source.generic.items.path": str,
    "embed.model_path": str,
    "embed.model_id": str,
    "embed.partitions": int,
    "embed.recency_half_life_days": float,
    "als.num_blocks": int,
    "mlflow.tracking_uri": str,
}

# The run id becomes a folder name and a partition value; a warehouse database goes into SQL.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
DATABASE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Spark's byte strings: a number with an optional unit (JavaUtils.byteStringAs).
MEMORY_PATTERN = re.compile(r"\d+([kmgtp]b?|b)?", re.IGNORECASE)
SCHEME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
EARLIEST_EVENT_TS = datetime(1900, 1, 1, tzinfo=timezone.utc)

_JAVA_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Bounds:
    """A closed or open interval a number must lie in; None leaves that side open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return "finite"


COUNT = Bounds(1)
SPARK_INT = Bounds(1, _JAVA_INT_MAX)  # passed to Spark as a Java int
NON_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, low_open=True)
FRACTION = Bounds(0, 1)
FINITE = Bounds()

# Every numeric setting of conf/base.yaml (tests/unit/test_config.py checks none is left out);
# null is allowed only where the default is null.
RANGES: dict[str, Bounds] = {
    "run.keep_runs": COUNT,
    "run.lock_wait_seconds": NON_NEGATIVE,
    "run.lock_stale_seconds": POSITIVE,
    "spark.shuffle_partitions": SPARK_INT,
    "spark.arrow_batch_rows": SPARK_INT,
    "source.sample.n_users": COUNT,
    "source.sample.n_items": COUNT,
    "source.sample.n_topics": COUNT,
    "source.sample.events_per_user": POSITIVE,
    "source.sample.review_fraction": FRACTION,
    "source.sample.orphan_review_fraction": FRACTION,
    "source.sample.bad_row_fraction": FRACTION,
    "source.sample.seed": NON_NEGATIVE,  # numpy refuses negative seeds
    "ingest.min_rating": FINITE,  # and below ingest.max_rating
    "ingest.max_rating": FINITE,
    "embed.batch_size": COUNT,
    "embed.max_length": COUNT,
    "embed.partitions": SPARK_INT,
    "embed.item_meta_weight": NON_NEGATIVE,
    "embed.recency_half_life_days": POSITIVE,
    "embed.text_neighbours": COUNT,
    "als.rank": SPARK_INT,
    "als.reg_param": NON_NEGATIVE,
    "als.alpha": POSITIVE,  # implicit confidence 1 + alpha * preference
    "als.max_iter": SPARK_INT,
    "als.checkpoint_interval": SPARK_INT,
    "als.num_blocks": SPARK_INT,
    "als.seed": Bounds(-(2**63), 2**63 - 1),  # a Java long
    "cooc.history_items": COUNT,
    "cooc.time_scale_days": POSITIVE,
    "cooc.neighbours": COUNT,
    "score.k": COUNT,
    "score.recent_half_life": POSITIVE,
    "score.recent_sharpness": POSITIVE,
    "score.cooc_half_life": POSITIVE,
    "score.weight_grid_step": Bounds(0, 1, low_open=True),
    "score.user_block_rows": COUNT,
    "score.history_items": COUNT,
    "evaluate.k": COUNT,  # and at most score.k
    "evaluate.segment_fraction": Bounds(0, 1, low_open=True),
    "evaluate.confidence": Bounds(0, 1, low_open=True, high_open=True),
}
# Lists of numbers: each must be non-empty, of the element type, and every element in range.
LIST_RANGES: dict[str, tuple[type, Bounds]] = {
    "als.grid.rank": (int, SPARK_INT),
    "als.grid.reg_param": (float, NON_NEGATIVE),
    "als.grid.alpha": (float, POSITIVE),
    "score.recent_sharpness_grid": (float, POSITIVE),
}
# Maps whose values are all numbers in one range (each entry is named on its own).
MAP_RANGES: dict[str, Bounds] = {
    "als.event_weights": NON_NEGATIVE,
    "score.weights": NON_NEGATIVE,  # and their sum positive
}
# Local files or folders the selected source reads (remote URIs are left to Spark).
SOURCE_PATHS = {
    "sample": (),
    "amazon": ("source.amazon.reviews_path", "source.amazon.meta_path"),
    "movielens": ("source.movielens.path",),
    "generic": (
        "source.generic.behaviour.path",
        "source.generic.reviews.path",
        "source.generic.items.path",
    ),
}


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped, so an error is one line."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


class ConfigError(ValueError):
    """A config file, override or argument is wrong; the message (one line) names the key and
    where it was set."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def error_line(exc: ConfigError) -> str:
    """What every entry point prints to stderr (then exits with status 2)."""
    return f"hybridrec: config error: {one_line(str(exc))}"


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
        ConfigError: on an unreadable file, an unknown key, a wrong type, a bad choice, a value
            out of range, a missing local path or environment variable; the message names the
            key and the file or ``--set`` that set it last.
    """
    base_path = Path(base) if base else conf_dir() / BASE_FILE
    defaults = _read_yaml(base_path)
    resolved = copy.deepcopy(defaults)
    sources = [str(base_path)]
    # Dotted key -> the last file or --set that set it; keys absent here come from the base file.
    origins: dict[str, str] = {}
    for path in paths:
        if Path(path).resolve() == base_path.resolve():
            continue
        update = _read_yaml(Path(path))
        _merge(resolved, defaults, update, origin=str(path), prefix="", origins=origins)
        sources.append(str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        origin = f"--set {item}"
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        nested: dict[str, Any] = {}
        cursor = nested
        parts = _override_path(key.strip())
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        try:
            cursor[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{key.strip()!r} in {origin}: the value is not valid YAML ({_yaml_problem(exc)})"
            ) from exc
        _merge(resolved, defaults, nested, origin=origin, prefix="", origins=origins)
        sources.append(origin)
    _Checker(resolved, origins, str(base_path)).check()
    return Config(resolved, tuple(sources))


def check_stages(stages: str | Sequence[str] | None, known: Sequence[str]) -> list[str]:
    """The stages to run: every ``known`` stage in order for None, else ``stages`` checked.

    Args:
        stages: the ``--stages`` value, comma-separated or already split; None for all.
        known: the pipeline's stage names, in order.

    Raises:
        ConfigError: naming ``--stages`` and the first empty, unknown or repeated name.
    """
    if stages is None:
        return list(known)
    given = stages if isinstance(stages, str) else ",".join(stages)
    names = [name.strip() for name in given.split(",")]
    seen: set[str] = set()
    for name in names:
        if not name:
            raise ConfigError(
                f"--stages {given!r} has an empty stage name; stages are {', '.join(known)}"
            )
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"--stages {given!r} names unknown stage {name!r}{hint}; "
                f"stages are {', '.join(known)}"
            )
        if name in seen:
            raise ConfigError(f"--stages {given!r} names stage {name!r} twice")
        seen.add(name)
    return names


def check_run_id(value: str) -> str:
    """``value`` if it is a usable run id (a folder name and a partition value), else an error.

    Raises:
        ConfigError: naming ``--run-id``.
    """
    if not isinstance(value, str) or not RUN_ID_PATTERN.fullmatch(value):
        raise ConfigError(
            f"--run-id {value!r} must be 1 to 100 letters, digits, '_', '.' or '-', starting "
            "with a letter or digit"
        )
    return value


def _override_path(dotted: str) -> list[str]:
    """Split a dotted key; inside an open map the rest is one key (``spark.conf.spark.x.y``)."""
    for open_map in OPEN_MAPS:
        if dotted.startswith(f"{open_map}.") and len(dotted) > len(open_map) + 1:
            return [*open_map.split("."), dotted[len(open_map) + 1 :]]
    return dotted.split(".")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The gist of a YAML error on one line (PyYAML's own message spans several)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _merge(
    target: dict,
    defaults: Any,
    update: Mapping,
    *,
    origin: str,
    prefix: str,
    origins: dict[str, str],
) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        open_map = prefix.rstrip(".") in OPEN_MAPS
        if not open_map and (not isinstance(defaults, Mapping) or key not in defaults):
            raise ConfigError(f"unknown config key {dotted!r} in {origin}")
        default = defaults.get(key) if isinstance(defaults, Mapping) else None
        if isinstance(default, Mapping) and dotted not in OPEN_MAPS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted!r} in {origin} must be a mapping, got {value!r}")
            _merge(target[key], default, value, origin=origin, prefix=f"{dotted}.", origins=origins)
            continue
        if dotted in OPEN_MAPS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted!r} in {origin} must be a mapping, got {value!r}")
            checked = {}
            for k, v in value.items():
                if not isinstance(k, str) or not k.strip():
                    raise ConfigError(f"{dotted!r} in {origin} has a key {k!r}: keys are names")
                checked[k] = _coerce(f"{dotted}.{k}", None, v, origin, open_map=True)
                origins[f"{dotted}.{k}"] = origin
            target[key] = {**target.get(key, {}), **checked}
            origins[dotted] = origin
            continue
        target[key] = _coerce(dotted, default, value, origin, open_map)
        origins[dotted] = origin


def _coerce(dotted: str, default: Any, value: Any, origin: str, open_map: bool) -> Any:
    if open_map:
        if isinstance(value, (Mapping, list)):
            raise ConfigError(f"{dotted!r} in {origin} must be a scalar, got {value!r}")
        if value is None:
            raise ConfigError(f"{dotted!r} in {origin} must have a value, got null")
        return value
    if value is None:
        # null restores the default (which may itself be null: an optional path or size).
        return copy.deepcopy(default)
    if default is None:
        # A null default marks an optional scalar of the type OPTIONAL_TYPES gives.
        if isinstance(value, (Mapping, list)):
            raise ConfigError(f"{dotted!r} in {origin} must be a scalar, got {value!r}")
        kind = OPTIONAL_TYPES.get(dotted)
        return value if kind is None else _coerce(dotted, kind(), value, origin, open_map)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted!r} in {origin} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str) and isinstance(value, date):
        # YAML reads an unquoted 2020-01-01 as a date; the setting wants its text.
        return value.isoformat()
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _local_path(value: str) -> Path | None:
    """The local file a path setting names, or None for a remote URI (hdfs://, s3a://, ...)."""
    if value.startswith("file:"):
        return Path(unquote(urlparse(value).path))
    if "://" in value:
        return None
    return Path(value)


def _glob_root(path: Path) -> Path:
    """The part of a Hadoop glob before its first wildcard: that much has to exist."""
    root = Path(path.anchor) if path.is_absolute() else Path()
    for part in path.parts[1:] if path.is_absolute() else path.parts:
        if any(c in part for c in "*?[{"):
            break
        root /= part
    return root


class _Checker:
    """Checks a merged config in place; every message names the key and where it was set."""

    def __init__(self, cfg: dict[str, Any], origins: Mapping[str, str], base: str):
        self.cfg = cfg
        self.origins = origins
        self.base = base

    def check(self) -> None:
        for key, allowed in CHOICES.items():
            if self.get(key) not in allowed:
                self.fail(key, f"is not one of {sorted(allowed)}")
        self.check_strings()
        for key, bounds in RANGES.items():
            self.check_number(key, self.get(key), bounds)
        for key, (kind, bounds) in LIST_RANGES.items():
            self.check_list(key, kind, bounds)
        for section, bounds in MAP_RANGES.items():
            for name, value in self.get(section).items():
                self.check_number(f"{section}.{name}", value, bounds)
        self.check_relations()
        self.check_event_types()
        self.check_min_event_ts()
        self.check_identifiers()
        self.check_paths()
        self.check_privacy()

    def get(self, dotted: str) -> Any:
        return _lookup(self.cfg, dotted)

    def origin(self, dotted: str) -> str:
        return self.origins.get(dotted, self.base)

    def shown(self, dotted: str, value: Any = None) -> str:
        value = self.get(dotted) if value is None else value
        return f"{dotted} = {value!r} (from {self.origin(dotted)})"

    def fail(self, dotted: str, requirement: str, value: Any = None) -> NoReturn:
        raise ConfigError(f"{self.shown(dotted, value)} {requirement}")

    def check_number(self, dotted: str, value: Any, bounds: Bounds) -> None:
        if value is None:
            return  # an optional setting left unset (null elsewhere restores the default)
        if not _is_number(value):
            self.fail(dotted, f"must be a number {bounds}", value)
        if not bounds.holds(value):
            self.fail(dotted, f"must be {bounds}", value)

    def check_list(self, dotted: str, kind: type, bounds: Bounds) -> None:
        values = self.get(dotted)
        name = "integers" if kind is int else "numbers"
        ok = bool(values) and all(
            _is_number(v) and (kind is float or isinstance(v, int)) and bounds.holds(v)
            for v in values
        )
        if not ok:
            self.fail(dotted, f"must be a non-empty list of {name} {bounds}")
        if kind is float:
            _set(self.cfg, dotted, [float(v) for v in values])

    def check_strings(self) -> None:
        """Every text setting must have some text (reader options and Spark settings may be
        empty strings); a generic source's column names too."""
        for dotted, value in _flatten(self.cfg):
            if any(dotted.startswith(f"{open_map}.") for open_map in OPEN_MAPS):
                continue
            if isinstance(value, str) and not value.strip():
                self.fail(dotted, "must not be empty")
        for section in _COLUMN_MAPS:
            for ours, theirs in self.get(section).items():
                if not isinstance(theirs, str) or not theirs.strip():
                    self.fail(f"{section}.{ours}", "must be a column name", theirs)

    def check_relations(self) -> None:
        low, high = "ingest.min_rating", "ingest.max_rating"
        if not self.get(low) < self.get(high):
            self.fail(low, f"must be < {self.shown(high)}")
        if self.get("evaluate.k") > self.get("score.k"):
            self.fail(
                "evaluate.k",
                f"must be <= {self.shown('score.k')}: only score.k items are recommended",
            )
        weights = self.get("score.weights")
        if sum(weights.values()) <= 0:
            where = sorted({self.origin(f"score.weights.{part}") for part in weights})
            raise ConfigError(
                f"score.weights = {weights!r} (from {', '.join(where)}) must have a positive sum"
            )

    def check_event_types(self) -> None:
        key = "ingest.event_types"
        types = self.get(key)
        if not types or not all(isinstance(t, str) and t.strip() for t in types):
            self.fail(key, "must be a non-empty list of event type names")
        if len(set(types)) != len(types):
            self.fail(key, "must not repeat an event type")

    def check_min_event_ts(self) -> None:
        key = "ingest.min_event_ts"
        value = self.get(key)
        text = value.strip()
        if text[-1:] in {"Z", "z"}:
            text = f"{text[:-1]}+00:00"  # Python 3.10 does not read the Z suffix
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            self.fail(key, "must be an ISO-8601 timestamp, e.g. 1990-01-01T00:00:00Z")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)  # Spark sessions here run in UTC
        parsed = parsed.astimezone(timezone.utc)
        if parsed <= EARLIEST_EVENT_TS:
            self.fail(key, "must be after 1900-01-01")
        if parsed > datetime.now(timezone.utc):
            self.fail(key, "must not be in the future (every event would be rejected)")
        _set(self.cfg, key, parsed.isoformat().replace("+00:00", "Z"))

    def check_identifiers(self) -> None:
        if not DATABASE_PATTERN.fullmatch(self.get("run.database")):
            self.fail(
                "run.database",
                "must be a SQL name: a letter or '_', then up to 127 letters, digits or '_'",
            )
        if not MEMORY_PATTERN.fullmatch(self.get("spark.driver_memory")):
            self.fail("spark.driver_memory", "must be a size like 4g, 512m or 4096")
        uri = self.get("mlflow.tracking_uri")
        if (
            uri is not None
            and SCHEME_PATTERN.match(uri)
            and "://" not in uri
            and not uri.startswith(("sqlite:", "file:", "databricks"))
        ):
            self.fail("mlflow.tracking_uri", "must be a URI (http://host:5000, sqlite:///x.db)")
        metastore = self.get("run.metastore")
        if metastore is not None and not metastore.startswith(("thrift://", "jdbc:")):
            self.fail("run.metastore", "must be a thrift:// URI or a jdbc: URL (or null)")

    def check_paths(self) -> None:
        work_dir = Path(self.get("run.work_dir"))
        if work_dir.exists() and not work_dir.is_dir():
            self.fail("run.work_dir", "is a file, not a folder")
        model = self.get("embed.model_path")
        if model is not None and "://" not in model and not (Path(model) / "config.json").is_file():
            self.fail(
                "embed.model_path",
                "is not a local model folder (no config.json in it)"
                if Path(model).is_dir()
                else "does not exist",
            )
        for key in SOURCE_PATHS[self.get("source.kind")]:
            value = self.get(key)
            local = _local_path(value) if value is not None else None
            if local is not None and not _glob_root(local).exists():
                self.fail(
                    key,
                    f"does not exist (relative to {Path.cwd()}); a path on another file system "
                    "needs its scheme, e.g. hdfs:// or s3a://",
                )
        self.check_source_is_given()

    def check_source_is_given(self) -> None:
        kind = self.get("source.kind")
        required = {
            "amazon": ("source.amazon.reviews_path",),
            "movielens": ("source.movielens.path",),
            "generic": ("source.generic.behaviour.path", "source.generic.reviews.path"),
        }.get(kind, ())
        if required and all(self.get(key) is None for key in required):
            self.fail(
                "source.kind",
                f"needs {' or '.join(required)} to be set",
            )

    def check_privacy(self) -> None:
        key_env = self.get("privacy.key_env")
        if not ENV_NAME_PATTERN.fullmatch(key_env):
            self.fail("privacy.key_env", "must be an environment variable name")
        # The key's value is a secret: messages name the variable, never what it holds.
        if self.get("privacy.pseudonymise_user_ids") and not os.environ.get(key_env, "").strip():
            self.fail(
                "privacy.pseudonymise_user_ids",
                f"needs the environment variable {key_env} (privacy.key_env, from "
                f"{self.origin('privacy.key_env')}) to be set and non-empty",
            )


_COLUMN_MAPS = (
    "source.generic.behaviour.columns",
    "source.generic.reviews.columns",
    "source.generic.items.columns",
)


def _lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = value[part]
    return value


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        cfg = cfg[part]
    cfg[last] = value


def _flatten(data: Mapping[str, Any], prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
