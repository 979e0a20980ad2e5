"""The privacy ledger as CSV, the report auditors take away."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import fields
from typing import Final

from coordinator.ledger.service import LedgerRow

COLUMNS: Final = tuple(field.name for field in fields(LedgerRow))


def ledger_csv(rows: Iterable[LedgerRow]) -> Iterator[str]:
    """A header line, then one line per row (floats with full precision, repr)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    yield _drain(buffer)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in COLUMNS])
        yield _drain(buffer)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
