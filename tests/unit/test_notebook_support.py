"""How the notebook finds the checkout and the run's settings without a command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridrec.analyst.notebook import ARGS_ENV, notebook_config, repository_root

REPO = Path(__file__).resolve().parents[2]


def test_the_checkout_is_found_from_the_notebooks_folder_and_from_elsewhere(tmp_path):
    assert repository_root(REPO / "notebooks") == REPO
    assert repository_root(REPO) == REPO
    assert repository_root(tmp_path) == REPO  # not in a checkout: the installed package's


def test_the_notebook_takes_the_commands_arguments_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv(ARGS_ENV, f"--conf conf/local.yaml --set 'run.work_dir={tmp_path} x'")

    cfg = notebook_config()

    assert cfg.run.work_dir == f"{tmp_path} x"
    assert cfg.source.kind == "sample"  # from conf/local.yaml


def test_without_arguments_the_notebook_reads_the_embedded_default(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(ARGS_ENV, raising=False)

    assert notebook_config().run.work_dir == "work"


def test_a_wrong_setting_names_the_key(monkeypatch):
    from hybridrec.config.loader import ConfigError

    monkeypatch.setenv(ARGS_ENV, "--set als.rank=zero")
    with pytest.raises(ConfigError, match="als.rank"):
        notebook_config()
