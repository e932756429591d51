"""Keep secrets out of the process's logs, its tracebacks and MLflow's printed run URLs.

:class:`RedactingFilter`, installed by :func:`install_log_redaction`, rewrites every log record on
its way to a handler, and the same install masks what Python itself prints of an exception
nobody caught (``sys.excepthook``, ``threading.excepthook``, ``sys.unraisablehook``);
:func:`mask_message` gives one-line errors the same masking. :func:`quiet_mlflow_urls` stops
MLflow's own "View run ... at: <url>" lines, which bypass logging (see its docstring). The masking
itself, and the redaction of config params and the ``runs`` table, is
:mod:`hybridrec.safety.masking`; its public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterable

from hybridrec.safety.masking import (
    MASK,
    MIN_SECRET_CHARS,
    is_secret_key,
    literal_pattern,
    mask_text,
    mask_uri,
    mask_with_pattern,
    name_parts,
    redact_mapping,
    secret_values,
)

__all__ = [
    "MASK",
    "MLFLOW_URL_ENV",
    "RedactingFilter",
    "install_log_redaction",
    "is_secret_key",
    "mask_message",
    "mask_text",
    "mask_uri",
    "name_parts",
    "quiet_mlflow_urls",
    "redact_mapping",
    "remove_log_redaction",
    "secret_values",
]

# mlflow/environment_variables.py: MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT, read on every call of
# TrackingServiceClient._log_url, so setting it at any time before a run ends is enough.
MLFLOW_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


class RedactingFilter(logging.Filter):
    """Masks URI credentials, secret ``name=value`` pairs and known secret literals in records.

    Never drops a record. The message is formatted first (``record.getMessage()``) because a
    secret is usually an argument, not part of the format string; a changed message replaces
    ``record.msg`` and clears ``record.args``. Exception and stack text is formatted and masked
    here too (into ``record.exc_text``, which standard formatters use as is).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self.add_secrets(secrets)

    @property
    def secrets(self) -> frozenset[str]:
        """The literals masked besides URI credentials (only those of at least 4 characters)."""
        return self._secrets

    def add_secrets(self, values: Iterable[str]) -> None:
        """Also mask these literals from now on (shorter than 4 characters: ignored)."""
        new = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_CHARS}
        with self._lock:
            if new <= self._secrets:
                return
            self._secrets = self._secrets | new
            # One swap, so a record filtered on another thread sees the old or the new pattern.
            self._pattern = literal_pattern(self._secrets)

    def mask(self, text: str) -> str:
        """``text`` with URI credentials, secret pairs and the known literals masked."""
        return mask_with_pattern(text, self._pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # logging would print the raw args when it reports the broken format; mask them here.
            message = f"{record.msg} (unformattable args: {record.args!r})"
        masked = self.mask(message)
        if masked != message or record.args:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXC_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


_EXC_FORMATTER = logging.Formatter()
_FILTER: RedactingFilter | None = None
_INSTALL_LOCK = threading.Lock()
# sys.excepthook, threading.excepthook and sys.unraisablehook as they were before the install.
_HOOKS_BEFORE: tuple | None = None
# Logger-level filters see only records logged on that very logger, so they back up the
# handler-level ones for handlers added after installation. MLflow's "mlflow", "alembic",
# "sqlalchemy.engine" and "huey" loggers do not propagate (mlflow/utils/logging_utils.py:
# _configure_mlflow_loggers); their handlers are covered with all others below.
_FILTERED_LOGGERS = ("", "hybridrec", "mlflow", "py4j", "alembic", "sqlalchemy.engine", "huey")


def _environment() -> dict[str, str]:
    # The shell's PWD/OLDPWD are folders, not passwords: masking them hid every path in the logs.
    return {k: v for k, v in os.environ.items() if k not in {"PWD", "OLDPWD"}}


def _all_loggers() -> list[logging.Logger]:
    existing = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    return [logging.getLogger(), *existing]


def install_log_redaction(
    secrets: Iterable[str] = (), *, from_env: bool = True, load_mlflow: bool = True
) -> RedactingFilter:
    """Mask secrets in every log record and uncaught exception the process prints; idempotent,
    cheap to call again.

    Puts one :class:`RedactingFilter` on every handler of every existing logger (root, MLflow's
    own non-propagating handler, py4j's, pytest's ...) and on :data:`logging.lastResort`, and as a
    logger-level filter on root, ``hybridrec``, ``mlflow``, ``py4j`` and MLflow's other loggers.
    Replaces ``sys.excepthook``, ``threading.excepthook`` and ``sys.unraisablehook`` by hooks
    that print the same report, masked (an uncaught MLflow error carries the tracking URI whole).
    Imports MLflow first when it is installed, as its import replaces the handler of the
    ``mlflow`` logger. Call it again after anything that adds handlers (``logging.basicConfig``
    with ``force``, a new file handler) and whenever new secrets are known: each call adds
    ``secrets`` to the same filter.

    Args:
        secrets: literal secrets to mask wherever they appear (e.g. ``secret_values(cfg.flat())``).
        from_env: also mask :func:`secret_values` of ``os.environ`` (``AWS_SECRET_ACCESS_KEY``,
            ``MLFLOW_TRACKING_PASSWORD``, the password in ``MLFLOW_TRACKING_URI`` ...).
        load_mlflow: import MLflow first, so that the handlers it adds on import are covered;
            False for commands that never use MLflow (it costs seconds to import).

    Returns:
        The process-wide filter.
    """
    global _FILTER
    if load_mlflow:
        with contextlib.suppress(ImportError):
            importlib.import_module("mlflow")
    with _INSTALL_LOCK:
        if _FILTER is None:
            _FILTER = RedactingFilter()
        redacting = _FILTER
        redacting.add_secrets(secrets)
        if from_env:
            redacting.add_secrets(secret_values(_environment()))
        for logger in _all_loggers():
            for handler in logger.handlers:
                handler.addFilter(redacting)  # addFilter skips a filter already there
        if logging.lastResort is not None:
            logging.lastResort.addFilter(redacting)
        for name in _FILTERED_LOGGERS:
            logging.getLogger(name).addFilter(redacting)
        _install_exception_hooks()
    return redacting


def remove_log_redaction() -> None:
    """Undo :func:`install_log_redaction` (for tests): the next install starts a fresh filter."""
    global _FILTER
    with _INSTALL_LOCK:
        if _FILTER is None:
            return
        for logger in _all_loggers():
            logger.removeFilter(_FILTER)
            for handler in logger.handlers:
                handler.removeFilter(_FILTER)
        if logging.lastResort is not None:
            logging.lastResort.removeFilter(_FILTER)
        _FILTER = None
        _remove_exception_hooks()


def mask_message(text: str) -> str:
    """``text`` masked as log lines are: URI credentials, secret pairs, and the literal secrets
    :func:`install_log_redaction` was given. For what is printed outside logging (one-line errors
    on stderr)."""
    return _FILTER.mask(text) if _FILTER is not None else mask_uri(text)


def _install_exception_hooks() -> None:
    global _HOOKS_BEFORE
    if _HOOKS_BEFORE is None:
        _HOOKS_BEFORE = (sys.excepthook, threading.excepthook, sys.unraisablehook)
        sys.excepthook = _masked_excepthook
        threading.excepthook = _masked_thread_excepthook
        sys.unraisablehook = _masked_unraisablehook


def _remove_exception_hooks() -> None:
    global _HOOKS_BEFORE
    if _HOOKS_BEFORE is not None:
        sys.excepthook, threading.excepthook, sys.unraisablehook = _HOOKS_BEFORE
        _HOOKS_BEFORE = None


def _masked_excepthook(exc_type, exc, tb) -> None:
    _print_masked("", exc_type, exc, tb)


def _masked_thread_excepthook(args: threading.ExceptHookArgs) -> None:
    # As threading's own hook: a thread ended by SystemExit is no error.
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    _print_masked(
        f"Exception in thread {name}:\n", args.exc_type, args.exc_value, args.exc_traceback
    )


def _masked_unraisablehook(unraisable) -> None:
    head = unraisable.err_msg or "Exception ignored in"
    if unraisable.object is not None:
        try:
            head = f"{head}: {unraisable.object!r}"
        except Exception:
            head = f"{head}: <{type(unraisable.object).__name__} object>"
    exc = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    _print_masked(f"{head}\n", *exc)


def _print_masked(head: str, exc_type, exc, tb) -> None:
    """Python's report of an exception (the same text as its own hooks), masked, on stderr."""
    stream = sys.stderr
    if stream is None:  # pythonw, or a closed console
        return
    text = head + "".join(traceback.format_exception(exc_type, exc, tb))
    stream.write(mask_message(text))
    stream.flush()


def quiet_mlflow_urls() -> None:
    """Stop MLflow printing run and experiment URLs, which carry the tracking URI's credentials.

    In MLflow 3.x (checked on 3.17) ``TrackingServiceClient.set_terminated`` calls
    ``TrackingServiceClient._log_url`` (mlflow/tracking/_tracking_service/client.py), which for
    an HTTP(S) tracking server (``RestStore``) writes ``🏃 View run <name> at: <url>`` and
    ``🧪 View experiment at: <url>`` with ``sys.stdout.write``, not through logging, so no log
    filter sees them. The URL starts with ``store.get_host_creds().host``, the tracking URI as
    given, ``user:password@`` included. ``_log_url`` returns early when the environment variable
    ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` is true; it is read on each call, so setting it
    here works whenever this runs before a run ends, and child processes inherit it. Every run
    and nested run ends through ``set_terminated``, hence the ~30 lines per pipeline run.
    """
    os.environ[MLFLOW_URL_ENV] = "true"
