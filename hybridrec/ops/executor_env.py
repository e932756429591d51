"""Building the executor environment: ``hybridrec-env.tar.gz``, for ``--archives ...#env``.

A fresh virtualenv, made without pip of its own; the driver's pip installs the requirements
(:mod:`hybridrec.ops.env_requirements`) into it with the driver's versions as constraints; the build
tools a dependency pulled in and :data:`PRUNE`'s headers and test suites are removed. Before
packing, the new env's Python imports every module an executor may load (:data:`EXECUTOR_MODULES`)
with a ``PYTHONPATH`` made as a worker's is (code zip, ``pyspark.zip``, py4j zip); a failure stops
the build. Then venv-pack packs it, and the manifest (Python version, the base interpreter the env
links to, the requirements and every installed package's version, sizes and the archive's sha256)
is written beside it.

The packed env's ``bin/python`` is a link to the absolute path of the base interpreter the env was
made from (a venv-pack limitation: a virtualenv does not contain Python itself). Every node that
runs executors needs that same Python, of the same version, at that same path, or pass
``--python-prefix PREFIX`` (venv-pack's option) naming the prefix of the nodes' Python (its
``bin/python3.X`` must exist there). The manifest records the path in ``python.base_interpreter``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from hybridrec.ops.code_archive import PackError, format_size, write_atomic
from hybridrec.ops.env_requirements import (
    BUILD_ONLY_DISTRIBUTIONS,
    DRIVER_ONLY_DISTRIBUTIONS,
    ENV_ARCHIVE,
    MANIFEST,
    MANIFEST_FORMAT,
    NO_DEPS_DISTRIBUTIONS,
    PRUNE,
    EnvSpec,
    canonical_name,
    driver_constraints,
    requirement_name,
)

# The pack's one log, whichever module writes: its lines name one logger, and
# ``--print-flags`` quiets them all at once (packaging.main).
log = logging.getLogger("hybridrec.ops.packaging")

# Modules an executor may import: those holding the functions that pandas UDFs, mapInPandas and
# RDD lambdas reference (cloudpickle pickles module-level functions by reference, so the worker
# imports their module), and what these import. tests/unit/test_packaging.py keeps this list in
# step with the sources.
EXECUTOR_MODULES = (
    "udfs.block_candidates",
    "udfs.metric_kernel",
    "udfs.candidate_kernel",
    "udfs.embedding_udf",
    "udfs.encoder",
    "udfs.onnx_encoder",
    "udfs.full_ranking",
    "udfs.ranking_kernel",
    "udfs.reasons",
    "udfs.rerank",
    "udfs.pair_kernel",
    "udfs.learned_ranker",
    "udfs.sentiment",
    "hybridrec.ranking.candidates",
    "hybridrec.ranking.learned",
    "hybridrec.ranking.ranker_fit",
    "hybridrec.models.cf",
    "hybridrec.models.cooc",
    "hybridrec.models.embedding",
    "hybridrec.models.topics",
    "hybridrec.models.interests",
    "hybridrec.evaluation.metrics",
    "hybridrec.evaluation.linear",
    "hybridrec.evaluation.item_knn",
    "hybridrec.evaluation.matrix",
    "hybridrec.evaluation.blocked",
    "hybridrec.models.nearest",
    "hybridrec.safety.privacy",
    "hybridrec.ranking.scoring",
    "hybridrec.ranking.blocks",
    "hybridrec.streaming.live",
    "hybridrec.models.foldin",
)


def pyspark_lib_zips() -> list[Path]:
    """``pyspark.zip`` and the py4j zip, as Spark puts them on an executor's ``PYTHONPATH``: from
    the driver's pyspark package (pip's has ``pyspark/python/lib``), else ``$SPARK_HOME``."""
    candidates = []
    with contextlib.suppress(ImportError):
        import importlib.util

        found = importlib.util.find_spec("pyspark")
        if found and found.submodule_search_locations:
            candidates.append(Path(next(iter(found.submodule_search_locations))) / "python/lib")
    if os.environ.get("SPARK_HOME"):
        candidates.append(Path(os.environ["SPARK_HOME"]) / "python/lib")
    for lib in candidates:
        pyspark = lib / "pyspark.zip"
        py4j = sorted(lib.glob("py4j-*.zip"))
        if pyspark.is_file() and py4j:
            return [pyspark, py4j[-1]]
    raise PackError(
        "no pyspark.zip and py4j zip found (looked in "
        + ", ".join(map(str, candidates or ["the pyspark package"]))
        + "): they are needed to check the env as an executor would load it"
    )


def executor_pythonpath(code_archive: Path) -> str:
    """``PYTHONPATH`` as an executor's Python worker has it: the --py-files zip and Spark's own."""
    return os.pathsep.join(str(p) for p in [code_archive, *pyspark_lib_zips()])


def executor_environ(code_archive: Path) -> dict[str, str]:
    """A clean environment for running an env's Python as a worker would: no virtualenv, no user
    site, no Python path but the executor's."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "JAVA_HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONPATH"] = executor_pythonpath(code_archive)
    env["PYTHONNOUSERSITE"] = "1"
    return env


_PROBE = r"""
import importlib, json, sys, traceback
from importlib import metadata
failures = {}
for name in sys.argv[1].split(","):
    try:
        module = importlib.import_module(name)
    except BaseException as exc:
        failures[name] = f"{type(exc).__name__}: {exc}"
        continue
    if not (module.__file__ or "").startswith(sys.argv[2]):
        failures[name] = f"loaded from {module.__file__}, not from the code zip {sys.argv[2]}"
packages = {}
for dist in metadata.distributions():
    if dist.metadata["Name"]:
        packages[dist.metadata["Name"]] = dist.version
torch = {}
try:
    import torch as t
    torch = {"version": t.__version__, "cuda": t.version.cuda}
except BaseException as exc:
    torch = {"error": repr(exc)}
print(json.dumps({"failures": failures, "packages": packages, "torch": torch,
                  "prefix": sys.prefix, "executable": sys.executable}))
"""


def probe_env(python: Path, code_archive: Path, modules: Sequence[str] = EXECUTOR_MODULES) -> dict:
    """Run the env's Python as an executor would and report imports, packages and torch."""
    # Run from an empty folder: the current one would be on sys.path (a checkout's packages).
    with tempfile.TemporaryDirectory(prefix="hybridrec-probe-") as cwd:
        done = subprocess.run(
            [str(python), "-c", _PROBE, ",".join(modules), str(code_archive)],
            env=executor_environ(code_archive),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
        )
    if done.returncode != 0:
        raise PackError(f"{python} could not run the import check: {_tail(done.stderr)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_probe(probe: dict, torch_mode: str | None) -> None:
    """Raise PackError naming every problem the probe found."""
    problems = []
    for module, error in sorted(probe["failures"].items()):
        hint = ""
        driver_only = [n for n in DRIVER_ONLY_DISTRIBUTIONS if f"'{n}'" in error]
        if driver_only:
            hint = f" ({driver_only[0]} is driver-only: {module} must not import it at top level)"
        problems.append(f"import {module}: {error}{hint}")
    installed = {canonical_name(n) for n in probe["packages"]}
    for name in DRIVER_ONLY_DISTRIBUTIONS:
        if name in installed:
            problems.append(f"{name} is installed in the env (it must not be)")
    torch = probe["torch"]
    if "error" in torch:
        problems.append(f"import torch: {torch['error']}")
    elif torch_mode == "cpu" and torch.get("cuda"):
        problems.append(
            f"asked for a CPU torch, got {torch['version']} built for CUDA {torch['cuda']}: give "
            "pip an index with CPU wheels (--pip-arg=--extra-index-url=https://download.pytorch"
            ".org/whl/cpu) or pass --torch cuda"
        )
    elif torch_mode == "cuda" and not torch.get("cuda"):
        problems.append(
            f"asked for a CUDA torch, got {torch['version']} (a CPU build): give pip an index with "
            "CUDA wheels (--pip-arg=--index-url=https://download.pytorch.org/whl/cu1XX) or pass "
            "--torch 'torch==VERSION+cu1XX'"
        )
    if problems:
        raise PackError("the env fails as an executor's: " + "; ".join(problems))


def create_env(
    prefix: Path, spec: EnvSpec, versions: Mapping[str, str], code_archive: Path
) -> dict:
    """Make the virtualenv at ``prefix``, install ``spec``'s requirements with the driver's pip
    (the env gets no pip of its own), check it as an executor; returns the probe's report."""
    log.info("creating a virtualenv at %s", prefix)
    _run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], "python -m venv")
    python = prefix / "bin" / "python"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(driver_constraints(versions)) + "\n")
        constraints = handle.name
    no_deps = {canonical_name(n) for n in NO_DEPS_DISTRIBUTIONS}
    with_deps = [r for r in spec.requirements if requirement_name(r) not in no_deps]
    alone = [r for r in spec.requirements if requirement_name(r) in no_deps]
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-input"]
    pip += ["--disable-pip-version-check", "--constraint", constraints]
    try:
        for requirements, extra in ((with_deps, []), (alone, ["--no-deps"])):
            if requirements:
                log.info("pip install %s", " ".join([*extra, *requirements, *spec.pip_args]))
                _run([*pip, *extra, *requirements, *spec.pip_args], "pip install", stream=True)
    finally:
        os.unlink(constraints)
    for (
        name
    ) in BUILD_ONLY_DISTRIBUTIONS:  # a dependency may have pulled one in; executors never run them
        _remove_distribution(prefix, name)
    prune(prefix)
    log.info("checking the env as an executor would load it: %s", ", ".join(EXECUTOR_MODULES))
    probe = probe_env(python, code_archive)
    check_probe(probe, spec.torch_mode)
    return probe


def prune(prefix: Path, patterns: Sequence[str] | None = None) -> int:
    """Remove :data:`PRUNE`'s folders from the env; returns the bytes freed."""
    patterns = PRUNE if patterns is None else patterns
    freed = 0
    for site in prefix.glob("lib/python*/site-packages"):
        for pattern in patterns:
            for path in sorted(site.glob(pattern)):
                if path.is_dir() and not path.is_symlink():
                    freed += _tree_size(path)
                    shutil.rmtree(path)
    log.info("pruned headers and test suites from the env: %s", format_size(freed))
    return freed


def pack_env(prefix: Path, target: Path, python_prefix: str | None) -> None:
    """venv-pack ``prefix`` into ``target`` (tar.gz)."""
    try:
        import venv_pack
    except ImportError as exc:
        raise PackError(
            "venv-pack is not installed in the driver's environment: pip install -e '.[pack]'"
        ) from exc
    with _heartbeat(f"packing {target.name}"):
        venv_pack.pack(
            prefix=str(prefix),
            output=str(target),
            format="tar.gz",
            python_prefix=python_prefix,
            force=True,
            verbose=False,
        )


def build_env(
    out_dir: Path,
    spec: EnvSpec,
    versions: Mapping[str, str],
    code_archive: Path,
) -> dict:
    """Build, check and pack the env into ``out_dir``; write and return its manifest."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    target = out_dir / ENV_ARCHIVE
    with tempfile.TemporaryDirectory(prefix=".build-env-", dir=out_dir) as build:
        prefix = Path(build) / "env"
        probe = create_env(prefix, spec, versions, code_archive)
        link = os.path.realpath(prefix / "bin" / "python")
        unpacked = _tree_size(prefix)
        partial = out_dir / f".{ENV_ARCHIVE}.partial"
        pack_env(prefix, partial, spec.python_prefix)
        partial.chmod(0o644)  # venv-pack writes it through a private temp file
        os.replace(partial, target)
        log.info("removing the build folder %s", build)
    seconds = time.perf_counter() - started
    size = target.stat().st_size
    packages = {canonical_name(n): v for n, v in sorted(probe["packages"].items())}
    manifest = {
        "format": MANIFEST_FORMAT,
        "key": spec.key(),
        "python": {
            "version": spec.python_version,
            "base_interpreter": (
                f"{spec.python_prefix}/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
                if spec.python_prefix
                else spec.base_interpreter
            ),
            "build_interpreter": spec.base_interpreter,
            "python_prefix": spec.python_prefix,
            "bin_python_link": link,
        },
        "torch": probe["torch"],
        "packages": packages,
        "archive": {
            "path": ENV_ARCHIVE,
            "bytes": size,
            "unpacked_bytes": unpacked,
            "sha256": _sha256(target),
        },
        "build_seconds": round(seconds, 1),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "driver_python": sys.executable,
    }
    write_atomic(out_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    log.info(
        "env archive %s built in %.0f s: %s packed, %s unpacked, %d packages",
        target,
        seconds,
        format_size(size),
        format_size(unpacked),
        len(packages),
    )
    return manifest


# --------------------------------------------------------------------------------------------
# Helpers


def _run(command: list[str], what: str, *, stream: bool = False) -> None:
    """Run ``command``; with ``stream`` its output lines go to the log as they come."""
    if not stream:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise PackError(
                f"{what} failed ({done.returncode}): {_tail(done.stderr or done.stdout)}"
            )
        return
    lines: list[str] = []
    with (
        _heartbeat(what),
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                log.info("%s: %s", what.split()[0], line)
    if proc.returncode != 0:
        raise PackError(f"{what} failed ({proc.returncode}): {_tail(chr(10).join(lines))}")


def _remove_distribution(prefix: Path, name: str) -> None:
    """Remove an installed distribution from the env by its RECORD (the env has no pip)."""
    for site in prefix.glob("lib/python*/site-packages"):
        for info in site.glob("*.dist-info"):
            if canonical_name(info.name.split("-")[0]) != name:
                continue
            record = info / "RECORD"
            if record.is_file():
                for row in record.read_text(encoding="utf-8").splitlines():
                    path = (site / row.split(",")[0]).resolve()
                    if path.is_file() and prefix.resolve() in path.parents:
                        path.unlink()
            shutil.rmtree(info, ignore_errors=True)
            log.info("removed %s from the env (executors do not need it)", info.name)


@contextlib.contextmanager
def _heartbeat(what: str, every: float = 15.0) -> Iterator[None]:
    """Log ``what`` at the start and every ``every`` seconds until the block ends."""
    started = time.perf_counter()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            log.info("%s: %.0f s so far", what, time.perf_counter() - started)

    log.info("%s", what)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        log.info("%s: done in %.0f s", what, time.perf_counter() - started)


def _tree_size(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tail(text: str, lines: int = 15) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])
