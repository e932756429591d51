"""A fold's item catalog, read from the written tables once per process while they are unchanged.

The score job reads the early and validation folds' catalogs twice (to tune the weights, then
to train the learned ranker) and ranks the test fold last; the evaluate job ranks test first.
Under ``hybridrec run`` (one process) each is collected once: the newest catalogs are kept while
their arrays fit ``score.catalog_cache_mb``, the last one loaded always, and only those of the
run the last one belongs to.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np

from hybridrec.config.loader import Config
from hybridrec.constants import (
    ALS_ITEM_FACTORS,
    INTERACTIONS,
    ITEM_COL,
    ITEM_EMBEDDINGS,
    ITEM_NEIGHBOURS,
    ITEM_TEXT_NEIGHBOURS,
    ITEM_TRANSITIONS,
    ITEMS,
)
from hybridrec.ranking.scoring import build_catalog, catalog_items, of_fold, popularity
from hybridrec.store.tables import Warehouse
from udfs import ranking_kernel

log = logging.getLogger(__name__)

# The tables a fold's catalog is read from; a catalog is reused while their snapshots are the
# same files (``Warehouse.files_stamp``).
CATALOG_TABLES = (
    INTERACTIONS,
    ITEMS,
    ALS_ITEM_FACTORS,
    ITEM_EMBEDDINGS,
    ITEM_NEIGHBOURS,
    ITEM_TEXT_NEIGHBOURS,
    ITEM_TRANSITIONS,
)
# The catalogs loaded in this process, by what they were loaded from, oldest first: collecting
# one again took a few seconds of Spark jobs at any size (4 s each on the built-in sample).
_CATALOGS: OrderedDict[tuple, ranking_kernel.ItemCatalog] = OrderedDict()


def load_catalog(warehouse: Warehouse, cfg: Config, fold: str) -> ranking_kernel.ItemCatalog:
    """The catalog of ``fold`` from the written factor and embedding tables (one this process
    has kept where those tables are the same snapshots; the arrays are shared, so no caller
    changes them)."""
    key = (
        warehouse.db_root,
        warehouse.run_id,
        fold,
        cfg.score.catalog,
        tuple(warehouse.files_stamp(t, run_id=warehouse.run_id) for t in CATALOG_TABLES),
    )
    if key in _CATALOGS:
        _CATALOGS.move_to_end(key)
        log.info("catalog (%s fold): reused, its tables unchanged since it was loaded", fold)
        return _CATALOGS[key]
    catalog = _read_catalog(warehouse, cfg, fold)
    for value in vars(catalog).values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # shared by every later caller: a change would leak
    # Another run's catalogs are not read again: a process works through one run at a time,
    # and the stream moves to the newest served run for good.
    for held in [k for k in _CATALOGS if k[:2] != key[:2]]:
        del _CATALOGS[held]
    _CATALOGS[key] = catalog
    _keep_within(cfg.score.catalog_cache_mb * 2**20)
    return catalog


def _keep_within(budget_bytes: float) -> None:
    """Drop the oldest catalogs until the rest fit ``budget_bytes`` (the newest stays)."""
    held = sum(map(_nbytes, _CATALOGS.values()))
    while len(_CATALOGS) > 1 and held > budget_bytes:
        held -= _nbytes(_CATALOGS.popitem(last=False)[1])


def _nbytes(catalog: ranking_kernel.ItemCatalog) -> int:
    return sum(v.nbytes for v in vars(catalog).values() if isinstance(v, np.ndarray))


def _read_catalog(warehouse: Warehouse, cfg: Config, fold: str) -> ranking_kernel.ItemCatalog:
    interactions = warehouse.read(INTERACTIONS)
    catalog = build_catalog(
        catalog_items(interactions, warehouse.read(ITEMS), cfg),
        of_fold(warehouse.read(ALS_ITEM_FACTORS), fold),
        of_fold(warehouse.read(ITEM_EMBEDDINGS), fold).withColumnRenamed("id", ITEM_COL),
        popularity(interactions, fold),
        of_fold(warehouse.read(ITEM_NEIGHBOURS), fold),
        of_fold(warehouse.read(ITEM_TEXT_NEIGHBOURS), fold),
        of_fold(warehouse.read(ITEM_TRANSITIONS), fold),
    )
    log.info(
        "catalog (%s fold): %d items, %d with ALS factors (rank %d), %d with text (dim %d), "
        "%d with co-occurrence neighbours, %d with text neighbours, %d with items had next",
        fold,
        len(catalog),
        catalog.has_cf.sum(),
        catalog.cf.shape[1],
        catalog.has_text.sum(),
        catalog.text.shape[1],
        (catalog.neighbours >= 0).any(axis=1).sum(),
        (catalog.text_neighbours >= 0).any(axis=1).sum(),
        (catalog.next_items >= 0).any(axis=1).sum(),
    )
    return catalog
