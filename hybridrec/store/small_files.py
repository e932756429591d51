"""Snapshots small enough to be written by the driver itself.

A Spark write of a few dozen rows costs a job (about 0.25 s on 2 cores: scheduling, a task,
the committer's renames), and a stream's micro-batch writes four tables. Rows that are already in
the driver (a small micro-batch's) are instead encoded as one Parquet file here (pyarrow, the
table's Spark schema as Arrow types: timestamps as UTC instants, which Spark reads back as its
timestamps) and written through the warehouse's Hadoop file system, so any storage Spark can
write to works; ``Warehouse`` publishes it as it publishes a Spark write.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType


@dataclass(frozen=True)
class SmallFrame:
    """Rows held in the driver, with the table's schema (column order and types)."""

    frame: pd.DataFrame
    schema: StructType

    def write_to(self, fs, path) -> int:
        """Write the rows as one Parquet file at ``path`` (a Hadoop Path on ``fs``); returns
        how many."""
        schema = to_arrow_schema(self.schema, timezone="UTC")
        columns = self.schema.fieldNames()
        table = pa.Table.from_pandas(self.frame[columns], schema=schema, preserve_index=False)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="snappy")
        out = fs.create(path, False)
        try:
            out.write(bytearray(buffer.getvalue()))
        finally:
            out.close()
        return table.num_rows
