"""The fold catalogs one process keeps: each read once while it fits the budget, the oldest
dropped first, the newest kept whatever its size, and none of a run other than the newest's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hybridrec.config.loader import load_config
from hybridrec.ranking import catalogs
from udfs.ranking_kernel import ItemCatalog

MB = 2**20


def _catalog(megabytes: float) -> ItemCatalog:
    n = int(megabytes * MB / 4 / 64)
    empty = np.zeros((n, 0), np.float32)
    return ItemCatalog(
        ids=np.array([f"i{j}" for j in range(n)]),
        cf=np.zeros((n, 64), np.float32),
        has_cf=np.zeros(n, bool),
        text=empty,
        has_text=np.zeros(n, bool),
        pop=np.zeros(n, np.float32),
        neighbours=empty.astype(np.int64),
        neighbour_sims=empty,
        text_neighbours=empty.astype(np.int64),
        text_neighbour_sims=empty,
        next_items=empty.astype(np.int64),
        next_sims=empty,
    )


@pytest.fixture
def reads(monkeypatch):
    """Every fold read from the tables, in order; each catalog of about 1 MB."""
    read = []

    def fake_read(warehouse, cfg, fold):
        read.append(fold)
        return _catalog(1.0)

    monkeypatch.setattr(catalogs, "_read_catalog", fake_read)
    monkeypatch.setattr(catalogs, "_CATALOGS", catalogs.OrderedDict())
    return read


def _warehouse(stamp="s1", run_id="r1"):
    return SimpleNamespace(db_root="/w", run_id=run_id, files_stamp=lambda name, run_id: (stamp,))


def _cfg(budget_mb: float):
    return load_config([], [f"score.catalog_cache_mb={budget_mb}"])


def test_every_fold_is_read_once_while_they_fit(reads):
    cfg, warehouse = _cfg(10), _warehouse()
    for fold in ("early", "validation", "early", "validation", "test", "test"):
        catalogs.load_catalog(warehouse, cfg, fold)
    assert reads == ["early", "validation", "test"]


def test_the_oldest_used_is_dropped_first_and_the_newest_always_kept(reads):
    cfg, warehouse = _cfg(2.5), _warehouse()  # two catalogs of ~1 MB fit, three do not
    for fold in ("early", "validation", "early", "test", "early", "validation"):
        catalogs.load_catalog(warehouse, cfg, fold)
    # test pushed out validation (early was used since); validation then pushed out test.
    assert reads == ["early", "validation", "test", "validation"]

    tiny = _cfg(0.1)  # smaller than one catalog: the newest is still held, only it
    catalogs.load_catalog(warehouse, tiny, "test")
    catalogs.load_catalog(warehouse, tiny, "test")
    assert reads[-1:] == ["test"] and len(catalogs._CATALOGS) == 1


def test_rewritten_tables_are_read_again(reads):
    cfg = _cfg(10)
    catalogs.load_catalog(_warehouse("s1"), cfg, "test")
    catalogs.load_catalog(_warehouse("s2"), cfg, "test")
    assert reads == ["test", "test"]


def test_another_runs_catalog_drops_the_last_runs(reads):
    cfg = _cfg(10)
    for fold in ("validation", "test"):
        catalogs.load_catalog(_warehouse(run_id="r1"), cfg, fold)
    catalogs.load_catalog(_warehouse(run_id="r2"), cfg, "test")  # e.g. the stream's next run
    assert [key[1] for key in catalogs._CATALOGS] == ["r2"]
    catalogs.load_catalog(_warehouse(run_id="r1"), cfg, "test")
    assert reads == ["validation", "test", "test", "test"]
