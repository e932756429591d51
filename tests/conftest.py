"""Shared fixtures: one resolved config and one local SparkSession for the whole test run."""

from __future__ import annotations

import os
import sys

import pytest

from hybridrec.config.loader import Config, load_config
from hybridrec.ops.session import get_spark


@pytest.fixture(scope="session")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The base config with its work dir (warehouse, checkpoints) under a fresh temp folder."""
    work_dir = tmp_path_factory.mktemp("work")
    return load_config(
        [],
        [f"run.work_dir={work_dir}", "spark.master=local[2]", "spark.shuffle_partitions=2"],
    )


@pytest.fixture(scope="session")
def spark(cfg: Config):
    """A real local session, started once; workers run on this interpreter."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = get_spark(cfg)
    yield session
    session.stop()


# The suite runs on two xdist workers (pyproject's addopts, --dist loadgroup). A session or
# module fixture is made once per worker that needs it: the tests sharing an expensive session
# fixture go to one worker as a group, and every other test goes with the rest of its file.
SHARED_FIXTURE_GROUPS = ("analyst_run", "packed_env")


def pytest_collection_modifyitems(items):
    for item in items:
        names = getattr(item, "fixturenames", ())
        shared = next((name for name in SHARED_FIXTURE_GROUPS if name in names), None)
        item.add_marker(pytest.mark.xdist_group(shared or item.nodeid.split("::")[0]))
