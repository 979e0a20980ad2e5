"""Paging of the console's lists: which page of how many."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

ROUNDS_PER_PAGE: Final = 25
AUDIT_PER_PAGE: Final = 50
INSTITUTIONS_PER_PAGE: Final = 25
LEDGER_INSTITUTIONS_PER_CHART: Final = 10
MAX_LISTED_MISMATCHES: Final = 200


@dataclass(frozen=True)
class Page:
    """Which page of how many (1-based)."""

    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages


def page_of(number: int, size: int, total: int) -> Page:
    last = max(1, -(-total // size))
    return Page(number=min(max(1, number), last), size=size, total=total)


def count_rows(session: Session, model: type[object], *where: sa.ColumnElement[bool]) -> int:
    return int(session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)
