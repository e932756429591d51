"""Hold a merged config to :mod:`hybridrec.config.schema`, and check the CLI's own arguments.

:func:`check_values` runs once per :func:`hybridrec.config.loader.load_config`; each failure is a
:class:`ConfigError` naming the key, its value and the file or ``--set`` that set it.
:func:`check_stages` and :func:`check_run_id` check ``--stages`` and ``--run-id`` the same way.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlparse

from hybridrec.config.errors import ConfigError
from hybridrec.config.schema import (
    CHOICES,
    COLUMN_MAPS,
    DATABASE_PATTERN,
    EARLIEST_EVENT_TS,
    ENV_NAME_PATTERN,
    LIST_RANGES,
    MAP_RANGES,
    MEMORY_PATTERN,
    OPEN_MAPS,
    RANGES,
    RUN_ID_PATTERN,
    SCHEME_PATTERN,
    SOURCE_PATHS,
    Bounds,
)


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


def check_values(cfg: dict[str, Any], origins: Mapping[str, str], base: str) -> None:
    """Check a merged config, normalising a few values in place (grids to floats, UTC times).

    Args:
        cfg: the merged config, nested as in ``conf/base.yaml``.
        origins: dotted key -> the file or ``--set`` that set it last.
        base: the defaults file, the origin of every key ``origins`` lacks.

    Raises:
        ConfigError: on the first value that breaks a rule.
    """
    _Checker(cfg, origins, base).check()


def dotted_items(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys and leaf values of a nested mapping (an empty mapping is a leaf)."""
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            yield from dotted_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


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
        self.check_embed_backend()
        self.check_stream_source()
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
        for dotted, value in dotted_items(self.cfg):
            if any(dotted.startswith(f"{open_map}.") for open_map in OPEN_MAPS):
                continue
            if isinstance(value, str) and not value.strip():
                self.fail(dotted, "must not be empty")
        for section in COLUMN_MAPS:
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
        if self.get("score.rerank_slots") > self.get("score.k"):
            self.fail(
                "score.rerank_slots",
                f"must be <= {self.shown('score.k')}: the re-ranked places are part of the list",
            )
        if self.get("ranker.candidates") < self.get("score.k"):
            self.fail(
                "ranker.candidates",
                f"must be >= {self.shown('score.k')}: the ranker orders them into the top K",
            )
        if self.get("topics.label_words") > self.get("topics.top_words"):
            self.fail(
                "topics.label_words",
                f"must be <= {self.shown('topics.top_words')}: the label is the top words' head",
            )
        weights = self.get("score.weights")
        if sum(weights.values()) <= 0:
            where = sorted({self.origin(f"score.weights.{part}") for part in weights})
            raise ConfigError(
                f"score.weights = {weights!r} (from {', '.join(where)}) must have a positive sum"
            )

    def check_stream_source(self) -> None:
        if self.get("stream.source") != "kafka":
            return
        for key in ("stream.kafka.bootstrap_servers", "stream.kafka.topic"):
            if not self.get(key):
                self.fail(key, f"is needed: {self.shown('stream.source')} reads a Kafka topic")

    def check_embed_backend(self) -> None:
        if self.get("embed.backend") != "torch" and self.get("embed.device") == "cuda":
            self.fail(
                "embed.backend",
                f"encodes on the CPU only, but {self.shown('embed.device')} asks for a GPU: use "
                "embed.backend torch on GPUs (it encodes in float16 there)",
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
