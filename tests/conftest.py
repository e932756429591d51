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
