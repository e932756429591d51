"""Any Parquet, CSV or JSON tables, mapped onto the raw shape by a column mapping in config.

``columns`` maps our column to theirs (``{user_id: customer, event_ts: ts}``); a column that is
not mapped and not present under our name is null (a table without ``event_type`` gets
``default_event_type``). Timestamps may be epoch seconds, epoch milliseconds or ISO strings.

CSV is read as RFC 4180 unless ``options`` say otherwise: ``header``, ``multiLine`` (a quoted
field may hold line breaks), ``quote '"'`` and ``escape '"'`` (a quote inside a quoted field is
written ``""``). Every column is read as text, whatever ``inferSchema`` says, so that a value the
reader could not convert is rejected by ingest rather than nulled. A record with more or fewer
fields than the header is kept whole, with ``parse_error`` ``wrong number of fields`` (Spark's
PERMISSIVE mode with a corrupt-record column; ``mode: DROPMALFORMED`` is refused, since it drops
rows silently). Its ``raw`` is the record's text exactly as the reader saw it. A ``multiLine`` file
is read by one task (a record may cross any line): give a big table as many files, or set
``multiLine: "false"`` when no field holds a line break.

``raw`` of a well-formed CSV record is that record written back as CSV: every field, in file
order, with the same delimiter and quoting rules, so ``""`` stays ``""`` and a quoted line break
stays inside its quotes. In ``multiLine`` mode Spark does not hand out the bytes of a record it
could parse, so this is not always byte-exact: quotes that were not needed are gone and needed
ones added, a field the reader turned null (an empty field, ``nullValue``) is written empty, and
the record's line ending is not kept. Every value is there as it was read, quoted line breaks
included: the file's line ending (``\\n`` or ``\\r\\n``, from its first line unless ``lineSep``
is given) is passed to the parser, which would otherwise rewrite a quoted ``\\r\\n`` to ``\\n``.
A file that mixes line endings is split at its first line's kind only: records that run
together are rejected as ``wrong number of fields``, and a CRLF record in an LF file (its last
field would end in ``\\r``) as ``mixed line endings``. A limit of the reader itself: a quote that
is never closed swallows the rest of the file into its field.

JSON lines are split at ``\n`` only (unless ``lineSep`` is given): a carriage return inside a line
is data, and a CRLF line's ``\r`` is its line ending. JSON is read with the same corrupt-record
column: a line that is not a JSON record (a raw control character inside a string is not JSON,
unless ``allowUnquotedControlChars`` is set) keeps its whole text as ``raw`` with ``parse_error``
``unparseable record``; other rows (JSON and Parquet) keep the row as JSON of all its columns
(null fields left out) as ``raw``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config.loader import Config
from hybridrec.sources import BEHAVIOUR_SCHEMA, ITEM_SCHEMA, REVIEW_SCHEMA, RawTables

# Columns a reader may add next to the data: the record as read and the reader's verdict. Named
# so that they do not meet a real column.
RAW_COL = "__hybridrec_raw"
ERROR_COL = "__hybridrec_parse_error"
CORRUPT_COL = "__hybridrec_corrupt_record"
WRONG_FIELDS = "wrong number of fields"
MIXED_ENDINGS = "mixed line endings"
UNPARSEABLE = "unparseable record"
CSV_DEFAULTS = {
    "header": "true",
    "multiLine": "true",
    "quote": '"',
    "escape": '"',
    "mode": "PERMISSIVE",
}
# A record ends at "\n" only: Spark's line readers by default also end one at a bare "\r".
LINE_SEP = "\n"
# Reader options that also say how a record is written back as CSV (raw of a valid record).
_CSV_WRITE_KEYS = ("sep", "delimiter", "quote", "escape", "charToEscapeQuoteEscaping", "nullValue")


def read(spark: SparkSession, cfg: Config) -> RawTables:
    generic = cfg.source.generic
    tables = {}
    for name, schema in (
        ("behaviour", BEHAVIOUR_SCHEMA),
        ("reviews", REVIEW_SCHEMA),
        ("items", ITEM_SCHEMA),
    ):
        table = generic[name]
        if not table.path:
            tables[name] = None
            continue
        df = read_table(spark, generic.format, table.path, dict(generic.options))
        constants = {"event_type": generic.default_event_type} if name == "behaviour" else {}
        tables[name] = to_raw(
            df,
            schema,
            dict(table.columns),
            f"{name}:{generic.format}:{table.path}",
            constants=constants,
        )
    if tables["behaviour"] is None and tables["reviews"] is None:
        raise ValueError("source.generic needs behaviour.path or reviews.path (or both)")
    return RawTables(**tables)


def read_table(
    spark: SparkSession, fmt: str, path: str, options: Mapping[str, object]
) -> DataFrame:
    """One input table; CSV and JSON with ``RAW_COL`` and ``ERROR_COL`` beside the data."""
    options = {key: str(value) for key, value in options.items()}
    if fmt == "csv":
        return read_csv(spark, path, options)
    if fmt == "json":
        return read_json(spark, path, options)
    return spark.read.format(fmt).options(**options).load(path)


def _merged(defaults: Mapping[str, str], options: Mapping[str, str]) -> dict[str, str]:
    """``options`` over ``defaults``; Spark's option names are case-insensitive, so are these."""
    given = {key.lower() for key in options}
    return {**{k: v for k, v in defaults.items() if k.lower() not in given}, **options}


def _get(options: Mapping[str, str], key: str) -> str | None:
    return next((v for k, v in options.items() if k.lower() == key.lower()), None)


def _without(options: Mapping[str, str], *keys: str) -> dict[str, str]:
    drop = {key.lower() for key in keys}
    return {k: v for k, v in options.items() if k.lower() not in drop}


def csv_options(options: Mapping[str, str]) -> dict[str, str]:
    """The CSV reader options used: RFC 4180 defaults under the given ones.

    Raises:
        ValueError: ``mode`` is DROPMALFORMED (rows would vanish without a reject).
    """
    merged = _merged(CSV_DEFAULTS, options)
    if (_get(merged, "mode") or "").upper() == "DROPMALFORMED":
        raise ValueError(
            "source.generic.options.mode DROPMALFORMED would drop rows without a trace; use "
            "PERMISSIVE (the default: malformed records are rejected) or FAILFAST"
        )
    return merged


def read_csv(
    spark: SparkSession,
    path: str,
    options: Mapping[str, str],
    header: Sequence[str] | None = None,
) -> DataFrame:
    """A CSV table, every column as text, with ``RAW_COL`` and ``ERROR_COL`` (see module doc).

    ``header``: the column names, when the caller has read the first line (the stream has):
    Spark then reads the files once, not twice."""
    opts = _without(csv_options(options), "inferSchema", "columnNameOfCorruptRecord")
    # The text reader that finds the line ending reads UTF-8: another encoding keeps detection.
    sniffed = all(_get(opts, key) is None for key in ("lineSep", "encoding", "charset"))
    if sniffed:
        opts["lineSep"] = _line_separator(spark, path)
    # The header (or the first record's width) gives the columns; the file is then read again
    # with that schema plus a corrupt-record column, which catches records of another width.
    names = list(header) if header else spark.read.options(**opts).csv(path).columns
    if not names:
        return spark.createDataFrame([], T.StructType([]))  # an empty file
    schema = T.StructType(
        [T.StructField(name, T.StringType()) for name in names]
        + [T.StructField(CORRUPT_COL, T.StringType())]
    )
    df = (
        spark.read.options(**opts)
        .option("columnNameOfCorruptRecord", CORRUPT_COL)
        .schema(schema)
        .csv(path)
    )
    write_opts = {
        k: v for k, v in opts.items() if k.lower() in {w.lower() for w in _CSV_WRITE_KEYS}
    }
    # Spark's CSV writer trims unquoted fields unless told not to: " U003 " must stay as read.
    write_opts |= {"ignoreLeadingWhiteSpace": "false", "ignoreTrailingWhiteSpace": "false"}
    record = F.to_csv(F.struct(*[F.col(f"`{name}`") for name in names]), write_opts)
    # A CRLF line in a file whose first line ends in LF leaves its CR on the last field.
    mixed = F.lit(sniffed and opts["lineSep"] == "\n") & F.col(f"`{names[-1]}`").endswith("\r")
    return df.select(
        *[F.col(f"`{name}`") for name in names],
        F.coalesce(F.col(CORRUPT_COL), record).alias(RAW_COL),
        F.when(F.col(CORRUPT_COL).isNotNull(), F.lit(WRONG_FIELDS))
        .when(mixed, F.lit(MIXED_ENDINGS))
        .alias(ERROR_COL),
    )


def _line_separator(spark: SparkSession, path: str) -> str:
    """``\r\n`` when the first line ends so, else ``\n``.

    Left to itself, the CSV parser detects it too, but then rewrites a quoted ``\r\n`` to
    ``\n``; given explicitly, quoted line breaks are kept as they are.
    """
    first = spark.read.option("lineSep", LINE_SEP).text(path).limit(1).collect()  # one line
    return "\r\n" if first and first[0][0].endswith("\r") else "\n"


def without_line_end_cr(line: Column) -> Column:
    """``line`` without the ``\r`` of a CRLF line ending, read with a ``\n`` separator.

    Cut as bytes: a line may hold bytes that are not UTF-8, which ingest must still find as read.
    """
    cut = F.substring(line.cast("binary"), F.lit(1), F.octet_length(line) - 1).cast("string")
    return F.when(line.endswith("\r"), cut).otherwise(line)


def read_json(spark: SparkSession, path: str, options: Mapping[str, str]) -> DataFrame:
    """A JSON table with ``RAW_COL`` and ``ERROR_COL``: a line that is not a JSON record is kept
    as its text, every other row as JSON of its columns."""
    opts = _merged({"lineSep": LINE_SEP}, _without(options, "columnNameOfCorruptRecord"))
    df = spark.read.options(**opts).option("columnNameOfCorruptRecord", CORRUPT_COL).json(path)
    names = [name for name in df.columns if name != CORRUPT_COL]
    if not names and CORRUPT_COL not in df.columns:
        return df  # an empty file
    row = F.to_json(F.struct(*[F.col(f"`{name}`") for name in names])) if names else F.lit(None)
    if CORRUPT_COL in df.columns:
        corrupt = without_line_end_cr(F.col(CORRUPT_COL))
    else:
        corrupt = F.lit(None).cast("string")
    return df.select(
        *[F.col(f"`{name}`") for name in names],
        F.coalesce(corrupt, row).alias(RAW_COL),
        F.when(corrupt.isNotNull(), F.lit(UNPARSEABLE)).alias(ERROR_COL),
    )


def to_raw(
    df: DataFrame,
    schema: T.StructType,
    columns: Mapping[str, str],
    source: str,
    *,
    constants: Mapping[str, str] | None = None,
) -> DataFrame:
    """Select and rename ``df``'s columns into ``schema``, with ``raw``, ``source`` and
    ``parse_error``; ``raw`` is ``df``'s ``RAW_COL`` when the reader gave one, else the input
    row as JSON.

    Raises:
        ValueError: a mapping names a column we do not know or one the input does not have.
    """
    unknown = set(columns) - set(schema.fieldNames())
    if unknown:
        raise ValueError(
            f"{source}: unknown target column(s) {sorted(unknown)} in the mapping; "
            f"known: {schema.fieldNames()}"
        )
    data = [c for c in df.columns if c not in (RAW_COL, ERROR_COL)]
    if not data:
        # An empty file has no columns to map: no rows either, and ingest says so.
        return _empty_raw(df.sparkSession, schema, source)
    missing = {theirs for theirs in columns.values() if theirs not in data}
    if missing:
        raise ValueError(
            f"{source}: mapped column(s) {sorted(missing)} not in the input, which has {data}"
        )
    constants = constants or {}
    selected: list[Column] = []
    for field in schema.fields:
        theirs = columns.get(field.name, field.name if field.name in data else None)
        if theirs is not None:
            value = F.col(f"`{theirs}`")
        elif field.name in constants:
            value = F.lit(constants[field.name])
        else:
            value = F.lit(None)
        if field.name == "rating":
            # The text is kept too, so that a non-numeric rating is rejected, not nulled.
            text = value.cast("string")
            selected += [text.alias("rating_raw"), text.try_cast("double").alias("rating")]
            continue
        selected.append(value.cast(field.dataType).alias(field.name))
    if RAW_COL in df.columns:
        raw = F.col(RAW_COL)
    else:
        raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in data]))
    error = F.col(ERROR_COL) if ERROR_COL in df.columns else F.lit(None).cast("string")
    return df.select(
        *selected, raw.alias("raw"), F.lit(source).alias("source"), error.alias("parse_error")
    )


def _empty_raw(spark: SparkSession, schema: T.StructType, source: str) -> DataFrame:
    fields = []
    for field in schema.fields:
        if field.name == "rating":
            fields.append(T.StructField("rating_raw", T.StringType()))
        fields.append(field)
    fields += [T.StructField(name, T.StringType()) for name in ("raw", "source", "parse_error")]
    return spark.createDataFrame([], T.StructType(fields))
