"""The executor environment, built and shipped: ``hybridrec pack``, the command.

One command writes into ``--out`` (default ``dist``):

- ``hybridrec-code.zip``, for ``--py-files``: the project's packages
  (:mod:`hybridrec.ops.code_archive`).
- ``hybridrec-env.tar.gz``, for ``--archives ...#env``: a fresh virtualenv holding only what the
  Python workers of executors load, at the driver's versions
  (:mod:`hybridrec.ops.env_requirements`), checked as an executor would load it and packed by
  venv-pack (:mod:`hybridrec.ops.executor_env`).
- ``hybridrec-env.json``, the manifest: what the env was built from; the env is rebuilt only when
  that changes, otherwise the archive is reused and the log says so.

Use (client mode; standalone clusters refuse cluster deploy mode for Python apps)::

    spark-submit $(hybridrec pack --out dist --print-flags) --master spark://HOST:7077 \
        jobs/ingest.py

``hybridrec pack`` prints the flags on stdout and its progress on stderr;
``--print-flags`` only refreshes the code zip and prints the flags, and exits 3 if the env archive
is missing or out of date (build it with ``hybridrec pack`` first). The flags are::

    --archives <out>/hybridrec-env.tar.gz#env --py-files <out>/hybridrec-code.zip
    --conf spark.pyspark.python=./env/bin/python --conf spark.pyspark.driver.python=<driver python>

``spark.pyspark.driver.python`` is needed as well: ``PYSPARK_PYTHON=./env/bin/python`` alone (or
``spark.pyspark.python`` without it) makes the client-mode driver look for ``./env/bin/python``
too, which breaks pip's ``spark-submit`` wrapper.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# driver_versions and build_env are looked up on their modules when called, so that a stand-in
# set there (the unit tests' fake build) is the one called.
from hybridrec.ops import env_requirements, executor_env
from hybridrec.ops.code_archive import (
    CODE_ARCHIVE,
    REPO_ROOT,
    PackError,
    build_code_archive,
    format_size,
)
from hybridrec.ops.env_requirements import (
    ENV_ARCHIVE,
    MANIFEST,
    env_spec,
    read_manifest,
    requirement_name,
    stale_reasons,
)

log = logging.getLogger(__name__)

EXIT_BUILD_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_BUILT = 3


class NotBuiltError(PackError):
    """``--print-flags``: the env archive is missing or was built from something else."""


@dataclass(frozen=True)
class PackResult:
    """What :func:`build` made: the two archives, the manifest (as written) and the spark-submit
    flags that ship them; ``reused`` is true when the env archive was taken from the cache."""

    env_archive: Path
    code_archive: Path
    manifest_path: Path
    manifest: dict
    flags: list[str]
    reused: bool
    seconds: float = 0.0

    def flags_line(self) -> str:
        """The flags for ``spark-submit $(...)``: joined by spaces, unquoted, since a shell does
        not remove quotes from a command substitution's output (see :func:`unsafe_flags`)."""
        return " ".join(self.flags)


# --------------------------------------------------------------------------------------------
# The whole command


def spark_submit_flags(out_dir: Path, driver_python: str | None = None) -> list[str]:
    """The spark-submit arguments that ship the env and the code from ``out_dir``."""
    out = Path(out_dir).resolve()
    return [
        "--archives",
        f"{out / ENV_ARCHIVE}#env",
        "--py-files",
        str(out / CODE_ARCHIVE),
        "--conf",
        "spark.pyspark.python=./env/bin/python",
        "--conf",
        f"spark.pyspark.driver.python={driver_python or sys.executable}",
    ]


def unsafe_flags(flags: Sequence[str]) -> list[str]:
    """The flags that ``$(...)`` would split, glob or leave quoted (whitespace, ``*?[``, quotes)."""
    return [f for f in flags if re.search(r"[\s*?\[\]'\"\\]", f)]


def build(
    out_dir: str | os.PathLike = "dist",
    *,
    torch_spec: str | None = None,
    python_prefix: str | None = None,
    pip_args: Sequence[str] = (),
    rebuild: bool = False,
    build_missing: bool = True,
    source_root: str | os.PathLike = REPO_ROOT,
) -> PackResult:
    """Write the code zip, build (or reuse) the env archive and its manifest in ``out_dir``.

    ``torch_spec``: ``"cpu"`` (default), ``"cuda"`` or a pip requirement; ``python_prefix``: the
    nodes' Python prefix (venv-pack ``--python-prefix``); ``pip_args``: appended to pip install;
    ``rebuild``: ignore the cache; ``build_missing=False``: raise :class:`NotBuiltError` instead
    of building when the cached env is missing or out of date (``--print-flags``).
    """
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    versions = env_requirements.driver_versions()
    spec = env_spec(torch_spec, python_prefix, pip_args, versions)
    code = build_code_archive(out, Path(source_root))
    manifest = read_manifest(out)
    reasons = ["--rebuild"] if rebuild else stale_reasons(manifest, spec, versions, out)
    if reasons:
        if not build_missing:
            raise NotBuiltError(
                f"{out / ENV_ARCHIVE} is missing or out of date ({'; '.join(reasons)}): "
                f"build it with hybridrec pack --out {shlex.quote(str(out))}"
            )
        log.info("building the env: %s", "; ".join(reasons))
        manifest = executor_env.build_env(out, spec, versions, code)
        reused = False
    else:
        assert manifest is not None
        log.info(
            "env archive %s reused (cached; built %s, requirements unchanged): %s packed, "
            "%s unpacked",
            out / ENV_ARCHIVE,
            manifest.get("built_at"),
            format_size(manifest["archive"]["bytes"]),
            format_size(manifest["archive"]["unpacked_bytes"]),
        )
        reused = True
    flags = spark_submit_flags(out)
    return PackResult(
        env_archive=(out / ENV_ARCHIVE).resolve(),
        code_archive=code.resolve(),
        manifest_path=(out / MANIFEST).resolve(),
        manifest=manifest,
        flags=flags,
        reused=reused,
        seconds=time.perf_counter() - started,
    )


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridrec pack",
        description=(
            "Build the executor environment (venv-pack tar.gz for --archives) and the code zip "
            "(--py-files); print the spark-submit flags that ship them on stdout."
        ),
    )
    parser.add_argument("--out", default="dist", help="output folder (default: dist)")
    parser.add_argument(
        "--torch",
        default=None,
        metavar="cpu|cuda|SPEC",
        help="torch build for executors: cpu (default), cuda, or a pip requirement as is",
    )
    parser.add_argument(
        "--pip-arg",
        action="append",
        default=None,
        metavar="ARG",
        help="extra argument for pip install, repeatable (write --pip-arg=--index-url=URL)",
    )
    parser.add_argument(
        "--python-prefix",
        default=None,
        help="prefix of the Python on the nodes, if not the base interpreter's path here",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the env even if cached")
    parser.add_argument(
        "--print-flags",
        action="store_true",
        help=(
            "only refresh the code zip and print the flags; exit 3 if the env is not built "
            "(--torch, --python-prefix and --pip-arg default to those of the last build)"
        ),
    )
    return parser


def main(argv: Sequence[str], setup_logging: Callable[[], None] | None = None) -> int:
    """``hybridrec pack``: the exit status. Log on stderr, flags (one line) on stdout."""
    args = argument_parser().parse_args(list(argv))
    if setup_logging is not None:
        setup_logging()
    if args.print_flags:
        log.setLevel(logging.WARNING)
        _options_of_last_build(args)
    try:
        result = build(
            args.out,
            torch_spec=args.torch,
            python_prefix=args.python_prefix,
            pip_args=args.pip_arg or [],
            rebuild=args.rebuild,
            build_missing=not args.print_flags,
        )
    except NotBuiltError as exc:
        print(f"hybridrec pack: {exc}", file=sys.stderr)
        return EXIT_NOT_BUILT
    except PackError as exc:
        print(f"hybridrec pack: {exc}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    unsafe = unsafe_flags(result.flags)
    if unsafe:
        print(
            f"hybridrec pack: a shell would split or expand {' '.join(unsafe)!r} in $(...): "
            "use an --out path (and a driver Python path) without spaces, quotes or *?[",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not args.print_flags:
        archive = result.manifest["archive"]
        log.info(
            "done in %.0f s: env %s (%s packed, %s unpacked, %s), code %s (%s); "
            "the env's bin/python links to %s: every node needs that Python there",
            result.seconds,
            result.env_archive,
            format_size(archive["bytes"]),
            format_size(archive["unpacked_bytes"]),
            "reused" if result.reused else f"built in {result.manifest['build_seconds']:.0f} s",
            result.code_archive,
            format_size(result.code_archive.stat().st_size),
            result.manifest["python"]["base_interpreter"],
        )
        log.info("spark-submit %s --master ... jobs/<job>.py ...", result.flags_line())
    sys.stdout.write(result.flags_line() + "\n")
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------------------------
# Helpers


def _options_of_last_build(args: argparse.Namespace) -> None:
    """``--print-flags``: the build options not given are those the manifest was built with, so
    that ``hybridrec pack --torch cuda`` then ``hybridrec pack --print-flags`` agree."""
    key = (read_manifest(Path(args.out)) or {}).get("key", {})
    if args.torch is None and key.get("requirements"):
        torch = [r for r in key["requirements"] if requirement_name(r) == "torch"]
        args.torch = key.get("torch_mode") or (torch[0] if torch else None)
    if args.python_prefix is None:
        args.python_prefix = key.get("python_prefix")
    if args.pip_arg is None:
        args.pip_arg = key.get("pip_args") or []
