"""Bulk import of items, users and events from CSV, JSON Lines and Parquet files.

``import_file(engine, "events", Path("events.csv"))`` streams the file into the engine in batches
and returns an :class:`ImportReport`; bad records are reported by field and where they are (the line
of a CSV or JSON Lines file, the row of a Parquet file) while the valid ones land. The readers are
usable on their own to stream raw records.
"""

from fyp.ingest.importer import KINDS, MAX_ERRORS, ImportReport, Kind, import_file
from fyp.ingest.readers import Format, RecordReader, count_hint, read_records, resolve_format

__all__ = [
    "KINDS",
    "MAX_ERRORS",
    "Format",
    "ImportReport",
    "Kind",
    "RecordReader",
    "count_hint",
    "import_file",
    "read_records",
    "resolve_format",
]
