"""Turn the long hourly CSV or Parquet file (one row per window and hour) into validated ``[N, 24, ...]``
arrays, and those into normalised tensors.

Window and subject ids are text, kept exactly as written (``S123-2024-05-01``, ``007``); windows are
sorted by id, by value when every id is a whole number. A missing value is an empty cell or ``NA``, ``NaN``,
``null`` in any case; any other text in a numeric column is an error.

A file is parsed once by pyarrow with explicit column types, then everything else is whole-array NumPy:
one sort by (window, hour), one reshape. Any problem in the file becomes a single :class:`DataError` naming
the file, the column, the first offending lines (CSV: header = line 1; Parquet: row numbers) and what is
wrong with them.

Modules, in the order a file passes through them: ``columns`` (the header against the column mapping),
``csv_input`` / ``parquet_input`` (the typed parse), ``validate`` (values, window order), ``read``
(:func:`read_split` → :class:`RawSplit`), ``splits`` (the three splits together), ``dataset`` (the
normaliser fitted on train and the window dataset), ``shared`` (one copy for all processes of a run).
"""

from aline.contract import HOURS
from aline.data.csv_input import MISSING_MARKERS
from aline.data.errors import DataError
from aline.data.read import RawSplit, read_split
from aline.data.splits import feature_report, load_splits, return_freed_memory

__all__ = [
    "HOURS",
    "MISSING_MARKERS",
    "DataError",
    "RawSplit",
    "feature_report",
    "load_splits",
    "read_split",
    "return_freed_memory",
]
