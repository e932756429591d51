"""A Spark ML stage that maps string ids to the dense int indices ALS was fitted on.

ALS needs int ids; the als job numbers users and items with ``zipWithIndex`` (see
``hybridrec.models.cf.index_ids``). Spark's own ``StringIndexerModel`` would hold every label on the
driver; this stage keeps the mapping as a DataFrame, saved as Parquet beside the stage's
metadata, and indexes by a join, so it scales with the data like the rest of the job.

The logged ALS model is ``PipelineModel([IdIndexModel(user_id), IdIndexModel(item_id),
ALSModel])``: it scores real ids. An id the model was not fitted on gets index -1, which has no
factors, so ALS gives it NaN (or drops the row, by its cold-start strategy).

This module imports nothing from hybridrec, so an MLflow model carrying the package as code
loads without the package installed.
"""

from __future__ import annotations

import os

from pyspark import keyword_only
from pyspark.ml import Model
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

UNKNOWN_INDEX = -1
DATA = "data"


class IdIndexModel(Model, HasInputCol, HasOutputCol, MLReadable, MLWritable):
    """Adds ``outputCol`` (int) holding the index of ``inputCol`` (string), -1 when unknown."""

    @keyword_only
    def __init__(self, *, mapping: DataFrame | None = None, inputCol=None, outputCol=None):
        super().__init__()
        self.mapping = mapping
        kwargs = self._input_kwargs
        kwargs.pop("mapping", None)
        self._set(**kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        id_col, index_col = self.getInputCol(), self.getOutputCol()
        lookup = self.mapping.toDF(id_col, "_index")
        return (
            dataset.join(lookup, id_col, "left")
            .withColumn(index_col, F.coalesce(F.col("_index"), F.lit(UNKNOWN_INDEX)).cast("int"))
            .drop("_index")
        )

    def write(self) -> MLWriter:
        return _Writer(self)

    @classmethod
    def read(cls) -> MLReader:
        return _Reader(cls)


class _Writer(MLWriter):
    def __init__(self, instance: IdIndexModel):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession)
        # Written by the executors, straight to ``path``: nothing passes through the driver.
        self.instance.mapping.write.parquet(os.path.join(path, DATA))


class _Reader(MLReader):
    def __init__(self, cls: type[IdIndexModel]):
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> IdIndexModel:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        instance = self.cls(mapping=self.sparkSession.read.parquet(os.path.join(path, DATA)))
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance
