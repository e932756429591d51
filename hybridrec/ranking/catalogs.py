"""A fold's item catalog, read from the written tables once per process while they are unchanged.

The score job ranks the test fold last and the evaluate job ranks it first: under ``hybridrec
run`` (one process) the second reuses the first's arrays instead of collecting them again.
"""

from __future__ import annotations

import logging

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
# The last catalog loaded in this process, by what it was loaded from: the evaluate job ranks
# the test fold the score job has just ranked (one process under ``hybridrec run``), and
# collecting it again took a few seconds of Spark jobs at any size. One is kept: item-sized.
_LAST_CATALOG: dict[tuple, ranking_kernel.ItemCatalog] = {}


def load_catalog(warehouse: Warehouse, cfg: Config, fold: str) -> ranking_kernel.ItemCatalog:
    """The catalog of ``fold`` from the written factor and embedding tables (the one this
    process loaded last where those tables are the same snapshots; the arrays are shared, so
    no caller changes them)."""
    key = (
        warehouse.db_root,
        warehouse.run_id,
        fold,
        cfg.score.catalog,
        tuple(warehouse.files_stamp(t, run_id=warehouse.run_id) for t in CATALOG_TABLES),
    )
    if key in _LAST_CATALOG:
        log.info("catalog (%s fold): reused, its tables unchanged since it was loaded", fold)
        return _LAST_CATALOG[key]
    catalog = _read_catalog(warehouse, cfg, fold)
    for value in vars(catalog).values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # shared by every later caller: a change would leak
    _LAST_CATALOG.clear()
    _LAST_CATALOG[key] = catalog
    return catalog


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
