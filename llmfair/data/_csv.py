"""CSV reading with the errors a user needs: which file, which columns, which line."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from llmfair.errors import DataError


def read_csv_checked(path: str | os.PathLike, required_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read a UTF-8 CSV as strings (no type guessing), failing clearly on what users get wrong.

    Raises:
        DataError: the file is missing, not UTF-8 (names the line), unparsable, or lacks columns
            (names every missing one and the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 (invalid byte 0x{raw[exc.start]:02x} on line {line}); "
            "re-save it as UTF-8"
        ) from None
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path} could not be parsed as CSV: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required_columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path} is missing column(s) {missing}; it has {list(frame.columns)}")
    return frame
