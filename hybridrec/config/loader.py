"""One config system: ``conf/base.yaml`` holds every key and default; overlays and ``--set`` change
values. Every value is checked when the config is loaded (type, choice, range, paths, identifiers,
the environment it needs), so a wrong setting fails at start, before Spark, as one line naming the
key and the file or ``--set`` that set it.

This module loads and merges the files, records where each key was set and hands the result to
:mod:`hybridrec.config.checks`; the rules live in :mod:`hybridrec.config.schema`. The error type and
the CLI argument checks are re-exported here for the entry points.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from datetime import date
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hybridrec.config.checks import check_run_id, check_stages, check_values, dotted_items
from hybridrec.config.errors import ConfigError, error_line, one_line
from hybridrec.config.schema import COLUMN_MAPS, MAP_RANGES, OPEN_MAPS, OPTIONAL_TYPES

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "BASE_FILE",
    "CONF_DIR_ENV",
    "Config",
    "ConfigError",
    "check_run_id",
    "check_stages",
    "conf_dir",
    "error_line",
    "load_config",
    "one_line",
]

CONF_DIR_ENV = "HYBRIDREC_CONF_DIR"
BASE_FILE = "base.yaml"

# What ``--set key=`` with nothing after ``=`` stands for until the merge names the key's kind:
# an unset shell variable or an empty template, never a wish for the default (that is ``null``).
_EMPTY = object()


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
        return dict(dotted_items(self._data))


def conf_dir() -> Path | Traversable:
    """Where ``base.yaml`` and the example overlays are: ``$HYBRIDREC_CONF_DIR``, else the
    checkout's ``conf/`` (an editable install), else the copy shipped in the package as
    ``hybridrec/conf`` (a wheel, or the code zip of ``hybridrec pack``, read in place)."""
    if os.environ.get(CONF_DIR_ENV):
        return Path(os.environ[CONF_DIR_ENV])
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / BASE_FILE).is_file():
        return checkout
    return resources.files("hybridrec") / "conf"


def _overlay_file(path: str | Path) -> Path | Traversable:
    """``path`` itself; a relative ``conf/<name>.yaml`` or ``<name>.yaml`` that is not there is
    the shipped overlay of that name, so ``--conf conf/local.yaml`` works from any folder."""
    given = Path(path)
    if given.is_file() or given.is_absolute() or given.parent not in (Path("."), Path("conf")):
        return given
    shipped = conf_dir() / given.name
    return shipped if shipped.is_file() else given


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
            An empty value is an error: ``null`` unsets a key whose default is null.
        base: the defaults file; ``conf/base.yaml`` (or ``$HYBRIDREC_CONF_DIR/base.yaml``) if None.

    Returns:
        The validated config.

    Raises:
        ConfigError: on an unreadable file, a key given twice in one mapping, an unknown key,
            an empty ``--set`` value, a wrong type, a bad choice, a value out of range, a missing
            local path or environment variable; the message names the key and the file or
            ``--set`` that set it last.
    """
    base_path = Path(base) if base else conf_dir() / BASE_FILE
    defaults = _read_yaml(base_path)
    resolved = copy.deepcopy(defaults)
    sources = [str(base_path)]
    # Dotted key -> the last file or --set that set it; keys absent here come from the base file.
    origins: dict[str, str] = {}
    for given in paths:
        path = _overlay_file(given)
        if _same_file(path, base_path):
            continue
        update = _read_yaml(path)
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
            cursor[parts[-1]] = _load_yaml(raw) if raw.strip() else _EMPTY
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{key.strip()!r} in {origin}: the value is not valid YAML ({_yaml_problem(exc)})"
            ) from exc
        _merge(resolved, defaults, nested, origin=origin, prefix="", origins=origins)
        sources.append(origin)
    check_values(resolved, origins, str(base_path))
    return Config(resolved, tuple(sources))


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


def _same_file(a: Path | Traversable, b: Path | Traversable) -> bool:
    if isinstance(a, Path) and isinstance(b, Path):
        return a.resolve() == b.resolve()
    return str(a) == str(b)


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping; ``line`` is the repeat's (1-based), ``key`` dotted."""

    def __init__(self, key: str, mark: yaml.Mark, first_line: int):
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=mark)
        self.key = key
        self.line = mark.line + 1
        self.first_line = first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML would keep the
    last one silently, so a value edited near the top of a file could be undone further down."""

    def construct_document(self, node: yaml.Node) -> Any:
        # Checked on the node tree, before any mapping is built: the mapping constructor folds
        # merge keys (<<) in first, where a key overriding a merged one looks like a repeat, and
        # it no longer knows the path of the key.
        self._check_unique(node, "", set())
        return super().construct_document(node)

    def _check_unique(self, node: yaml.Node, prefix: str, seen: set[int]) -> None:
        if id(node) in seen:
            return  # an alias of a node already checked (or a recursive one)
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self._check_unique(item, prefix, seen)
        elif isinstance(node, yaml.MappingNode):
            first_lines: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = self._key(key_node)
                if key is None:
                    self._check_unique(value_node, prefix, seen)
                    continue
                if key in first_lines:
                    raise _DuplicateKeyError(
                        f"{prefix}{key}", key_node.start_mark, first_lines[key]
                    )
                first_lines[key] = key_node.start_mark.line + 1
                self._check_unique(value_node, f"{prefix}{key}.", seen)

    def _key(self, node: yaml.Node) -> Any:
        """The key as the mapping will hold it, or None for a merge key (its mapping's keys are
        this mapping's) and for a key no mapping can hold (PyYAML reports that one itself)."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:merge":
            return None
        key = self.construct_object(node, deep=True)
        try:
            hash(key)
        except TypeError:
            return None
        return key


def _load_yaml(text: str) -> Any:
    """``text`` parsed as YAML like ``yaml.safe_load`` does, but a repeated key is an error.

    Raises:
        yaml.YAMLError: ``_DuplicateKeyError`` for a key given twice in one mapping.
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _read_yaml(path: Path | Traversable) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _load_yaml(path.read_text()) or {}
    except _DuplicateKeyError as exc:
        raise ConfigError(
            f"config file {path} line {exc.line}: key {exc.key!r} is given twice "
            f"(first at line {exc.first_line}); YAML would keep only the last"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _merge(
    target: dict,
    defaults: Mapping[str, Any],
    update: Mapping,
    *,
    origin: str,
    prefix: str,
    origins: dict[str, str],
) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            raise ConfigError(f"unknown config key {dotted!r} in {origin}")
        default = defaults[key]
        if value is _EMPTY:
            raise _empty(dotted, origin, _empty_hint(dotted, default))
        if (dotted in OPEN_MAPS or isinstance(default, Mapping)) and not isinstance(value, Mapping):
            raise ConfigError(f"{dotted!r} in {origin} must be a mapping, got {value!r}")
        if dotted in OPEN_MAPS:
            entries = {}
            for k, v in value.items():
                if not isinstance(k, str) or not k.strip():
                    raise ConfigError(f"{dotted!r} in {origin} has a key {k!r}: keys are names")
                if v is _EMPTY:
                    raise _empty(f"{dotted}.{k}", origin, _open_hint(dotted))
                entries[k] = _open_value(f"{dotted}.{k}", v, origin)
                origins[f"{dotted}.{k}"] = origin
            target[key] = {**target.get(key, {}), **entries}
            origins[dotted] = origin
        elif isinstance(default, Mapping):
            _merge(target[key], default, value, origin=origin, prefix=f"{dotted}.", origins=origins)
        else:
            target[key] = _coerce(dotted, default, value, origin)
            origins[dotted] = origin


def _open_value(dotted: str, value: Any, origin: str) -> Any:
    """An open map's entry: any scalar but null."""
    if isinstance(value, (Mapping, list)):
        raise ConfigError(f"{dotted!r} in {origin} must be a scalar, got {value!r}")
    if value is None:
        raise ConfigError(f"{dotted!r} in {origin} must have a value, got null")
    return value


def _empty(dotted: str, origin: str, hint: str) -> ConfigError:
    """The error for ``--set key=``: nothing after ``=`` is what an unset shell variable or an
    empty template gives, so it must not quietly become the default (or an overlay's value)."""
    return ConfigError(f"{dotted!r} in {origin} is empty (an unset variable or template?): {hint}")


def _empty_hint(dotted: str, default: Any) -> str:
    """What to write instead of nothing, by the kind of value ``dotted`` holds."""
    if dotted in OPEN_MAPS or isinstance(default, Mapping):
        return "give a mapping"
    if isinstance(default, list):
        return "give a list"
    if default is None:
        # Only a key whose default is null has a meaning for null (conf/base.yaml says which).
        kind = OPTIONAL_TYPES.get(dotted)
        return f"give a value ({kind.__name__ if kind else 'any'}), or null to leave it unset"
    return f"give a value ({type(default).__name__}), or leave the --set out"


def _open_hint(open_map: str) -> str:
    """What to write instead of nothing for an entry of ``open_map``."""
    if open_map in MAP_RANGES:
        return "give a number"
    if open_map in COLUMN_MAPS:
        return "give a column name"
    # Reader options and Spark settings may be empty text, but only when written as ''.
    return "give a value ('' for empty text)"


def _coerce(dotted: str, default: Any, value: Any, origin: str) -> Any:
    if value is None:
        # null restores the default (which may itself be null: an optional path or size).
        return copy.deepcopy(default)
    if default is None:
        # A null default marks an optional scalar of the type OPTIONAL_TYPES gives.
        if isinstance(value, (Mapping, list)):
            raise ConfigError(f"{dotted!r} in {origin} must be a scalar, got {value!r}")
        kind = OPTIONAL_TYPES.get(dotted)
        return value if kind is None else _coerce(dotted, kind(), value, origin)
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


def work_path(cfg: Config, key: str, default_name: str, section: str = "run") -> str:
    """An absolute path (or URI) for a ``<section>.<key>`` folder, defaulting under
    run.work_dir."""
    value = cfg[section][key]
    if value and "://" in str(value):
        return str(value)
    return str(Path(value or Path(cfg.run.work_dir) / default_name).resolve())
