"""Shared fixtures: one resolved config and one local SparkSession for the whole test run."""

from __future__ import annotations

import os
import sys

import pytest

from hybridrec.config.loader import Config, load_config
from hybridrec.ops.session import SHORT_RUN_SETTINGS, get_spark

# An xdist worker's __main__ (execnet's bootstrap) has neither __spec__ nor __file__, which
# pyspark.sql.connect takes for a doctest run and answers with sys.exit(0) when MLflow imports
# it to save a Spark model.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"


@pytest.fixture(scope="session")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The base config with its work dir (warehouse, checkpoints) under a fresh temp folder."""
    work_dir = tmp_path_factory.mktemp("work")
    return load_config(
        [],
        [
            f"run.work_dir={work_dir}",
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            # Every session of the suite runs small jobs (hybridrec.ops.session).
            *SHORT_RUN_SETTINGS,
        ],
    )


@pytest.fixture(scope="session")
def spark(cfg: Config):
    """A real local session, started once; workers run on this interpreter."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = get_spark(cfg)
    yield session
    session.stop()


# The suite runs on two xdist workers (pyproject's addopts). A session or module fixture is made
# once per worker that needs it, so the unit of work given to a worker is a file (its module
# fixtures made once), and the files that share an expensive session fixture go together.
SHARED_FIXTURE_FILES = {
    "analyst_run": (
        "tests/integration/test_analyst.py",
        "tests/integration/test_notebook.py",
        "tests/integration/test_sql_access.py",
        "tests/integration/test_stream.py",
    ),
    "packed_env": ("tests/integration/test_pack.py", "tests/integration/test_cluster.py"),
}


def work_unit(nodeid: str) -> str:
    """The unit a test is scheduled in: its shared fixture's name, else its file."""
    path = nodeid.split("::", 1)[0]
    return next((f for f, files in SHARED_FIXTURE_FILES.items() if path in files), path)


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture in SHARED_FIXTURE_FILES:
            if fixture in getattr(item, "fixturenames", ()) and work_unit(item.nodeid) != fixture:
                raise pytest.UsageError(
                    f"{item.nodeid} uses {fixture}: add its file to SHARED_FIXTURE_FILES in "
                    "tests/conftest.py, or each xdist worker makes the fixture again"
                )


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    # xdist would queue the units with the most tests first, which puts the single-test Airflow
    # and run-safety files (several minutes each) last, into the suite's tail. Collection
    # order starts with tests/integration, the long units, and the unit tests fill in after.
    config.option.loadscopereorder = False

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)
