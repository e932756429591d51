"""Batches of texts of similar length for an encoder, put back in input order."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def encode_by_length(
    texts: list[str], batch_size: int, dim: int, encode_batch: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """``encode_batch`` over batches of texts of similar length, put back in input order.

    Padding costs as much as real tokens: batching by length keeps it small.
    """
    out = np.empty((len(texts), dim), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = encode_batch([texts[i] for i in idx])
    return out
