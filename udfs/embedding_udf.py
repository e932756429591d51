"""The encoder as a Spark pandas UDF: an iterator UDF, so a worker loads the model once and then
streams every Arrow batch of its partition through it."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from udfs.encoder import choose_device, get_encoder


def encode_texts_udf(
    *,
    model_path: str | None,
    device: str,
    max_length: int,
    batch_size: int,
    backend: str = "torch",
    onnx_cache_dir: str | None = None,
):
    """A pandas UDF mapping a string column to ``array<float>`` L2-normalised text vectors.

    ``model_path`` None: the bundled model, resolved by each worker in its own environment.
    ``backend`` ``torch-bf16``, ``onnx`` or ``onnx-fp32`` encodes on the task's CPUs whatever the
    device setting.
    """

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def encode_texts(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        where = choose_device(device) if backend == "torch" else "cpu"
        encoder = get_encoder(model_path, where, max_length, batch_size, backend, onnx_cache_dir)
        for texts in batches:
            vectors = encoder.encode(texts.fillna("").tolist())
            yield pd.Series(list(vectors))

    return encode_texts
