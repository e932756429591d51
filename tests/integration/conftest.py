"""One finished pipeline run on a tiny sample, made by the real CLI in its own process, that the
analyst-facing tests (fresh sessions, SQL over JDBC, the notebook) read as a user would: from new
processes. The pytest process never opens this run's metastore, because embedded Derby serves
one process at a time.

The run is made by a wheel install of the project (not the editable checkout), from an empty
folder, with ``--conf conf/local.yaml`` found among the overlays the wheel ships: what a cluster
image or a user's ``pip install hybridrec-*.whl`` has.
"""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hybridrec.ops.session import SHORT_RUN_SPARK_CONF

REPO = Path(__file__).resolve().parents[2]

# Small enough for CI, large enough that every table, segment and reason kind has rows.
TINY_SETTINGS = {
    "source": {"sample": {"n_users": 80, "n_items": 50, "events_per_user": 8}},
    "als": {"max_iter": 3, "grid": {"rank": [4], "reg_param": [0.1], "alpha": [1.0]}},
    "score": {
        "weight_grid_step": 0.5,
        "recent_sharpness_grid": [1.0],
        "k": 5,
        "debias_grid": [0.0, 1.0],
        "next_share_grid": [0.0, 0.1],
        # No early fold: these runs test the platform; the end-to-end test fits that fold.
        "early_target": "never",
    },
    # One point per baseline grid: these runs test the platform, not the picks.
    "evaluate": {"k": 5, "ease": {"l2_grid": [10.0]}, "item_knn": {"neighbours_grid": [10]}},
    "embed": {"text_neighbours": 10},
    # The learned ranker's whole path (score, evaluate, stream, served model, a cluster), served
    # whatever a few dozen held-back users say; one depth.
    "ranker": {"serve": "always", "max_depth_grid": [3]},
    # Two k to pick from by silhouette: the pick runs, at half the fits.
    "topics": {"k_grid": [4, 8]},
    "spark": {
        "master": "local[2]",
        "shuffle_partitions": 2,
        "conf": dict(SHORT_RUN_SPARK_CONF),
    },
}


@pytest.fixture(scope="session")
def packed_env():
    """``hybridrec pack`` once per session, into the checkout's ignored ``build/`` folder: a
    fresh clone (CI) builds it; a second local session reuses it when nothing it is built from
    changed."""
    from hybridrec.ops import packaging

    started = time.perf_counter()
    result = packaging.build(REPO / "build" / "test-dist")
    archive = result.manifest["archive"]
    print(
        f"\nhybridrec pack: {time.perf_counter() - started:.0f} s (reused: {result.reused}); "
        f"env {archive['bytes'] / 1e6:.0f} MB packed, {archive['unpacked_bytes'] / 1e6:.0f} MB "
        f"unpacked; code {result.code_archive.stat().st_size / 1e3:.0f} kB",
        file=sys.stderr,
    )
    return result


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    """A copy of TINY_SETTINGS for tests that write their own overlay."""
    return copy.deepcopy(TINY_SETTINGS)


@dataclass
class AnalystRun:
    """Where the run lives and how to reach it: ``conf`` is the overlay list every command and the
    notebook (``HYBRIDREC_ARGS``) take; ``log`` is the run's whole stdout and stderr."""

    run_id: str
    work_dir: Path
    conf: list[str]
    log: str

    def env(self) -> dict[str, str]:
        """The environment of a new process: no tracking URI exported by an earlier in-process
        run, and the notebook's config."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        }
        env["HYBRIDREC_ARGS"] = shlex.join(self.conf_args())
        return env

    def conf_args(self) -> list[str]:
        return [arg for path in self.conf for arg in ("--conf", path)]


@dataclass
class WheelInstall:
    wheel: Path
    python: Path
    site_packages: Path

    @property
    def hybridrec(self) -> Path:
        return self.python.parent / "hybridrec"


@pytest.fixture(scope="session")
def wheel_install(tmp_path_factory: pytest.TempPathFactory) -> WheelInstall:
    """The project built as a wheel from its files (tracked, and untracked but not ignored) and
    installed, not editable, into a new venv. Its dependencies come from this venv through a
    ``.pth`` line, after the venv's own site-packages, so the wheel's code wins."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (root / "dist").glob("hybridrec-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site_packages / "zz_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8"
    )
    return WheelInstall(wheel, python, site_packages)


@pytest.fixture(scope="session")
def analyst_run(
    tmp_path_factory: pytest.TempPathFactory, wheel_install: WheelInstall
) -> AnalystRun:
    root = tmp_path_factory.mktemp("analyst")
    work_dir = root / "work"
    overlay = root / "tiny.yaml"
    overlay.write_text(
        yaml.safe_dump({**TINY_SETTINGS, "run": {"work_dir": str(work_dir)}}), encoding="utf-8"
    )
    run = AnalystRun("analyst-run", work_dir, [str(REPO / "conf/local.yaml"), str(overlay)], "")
    empty = root / "cwd"
    empty.mkdir()
    done = subprocess.run(
        [str(wheel_install.hybridrec), "run", "--conf", "conf/local.yaml", "--conf", str(overlay)]
        + ["--run-id", run.run_id],
        cwd=empty,
        env=run.env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    run.log = done.stdout + done.stderr
    assert done.returncode == 0, run.log[-4000:]
    return run
