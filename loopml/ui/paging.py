"""Pages of rows: ``?page=N&per=M`` read once, bounded, and the links a pager draws."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Query

MAX_PER = 200


@dataclass
class Page:
    page: int
    per: int
    total: int | None = None

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per

    @property
    def pages(self) -> int | None:
        return None if self.total is None else max(1, -(-self.total // self.per))

    @property
    def has_next(self) -> bool:
        return self.total is None or self.page < (self.pages or 1)


def page_params(page: int = Query(1, ge=1, le=1_000_000, description="Page number, from 1."),
                per: int = Query(50, ge=1, le=MAX_PER, description=f"Rows per page (1..{MAX_PER}).")) -> Page:
    return Page(page, per)
