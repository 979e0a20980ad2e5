"""Where a round's aggregation spends its time: used by `benchmarks/coordinator.py`.

Two views, both on the real stack:

- `handoffs`: from the coordinator's own timestamps of a round aggregated by the worker
  processes: stage opened -> first slice taken (Celery hand-off of the slice tasks), first
  slice taken -> last slice stored (the slices, in parallel), last slice stored -> stage
  closed (hand-off of `finish` and `finish` itself);
- `InProcessAggregator.profile`: with no worker process running, the benchmark runs the same
  task functions (`coordinator.tasks.unmask_slice` for every slice, then `finish_round`)
  itself, one after the other, under cProfile, after warm-up rounds, with the blob store
  wrapped to time every call (reads run on reader threads, which cProfile does not see).
  Own time per function is grouped into blob I/O, PRG expansion, mask keys, summing,
  decoding, strategy, metrics, database and the rest.
"""

from __future__ import annotations

import cProfile
import pstats
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from coordinator.blobs.store import BlobRef, BlobStore


class TimedBlobs(BlobStore):
    """A blob store that times every call of the one it wraps (any thread)."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def _add(self, what: str, began: float) -> None:
        with self._lock:
            self.seconds[what] += time.perf_counter() - began
            self.calls[what] += 1

    async def write_stream(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_size: int,
        expected_size: int | None = None,
    ) -> BlobRef:
        return await self.inner.write_stream(
            key, chunks, max_size=max_size, expected_size=expected_size
        )

    def write(
        self, key: str, chunks: Iterable[bytes], *, max_size: int, expected_size: int | None = None
    ) -> BlobRef:
        began = time.perf_counter()
        try:
            return self.inner.write(key, chunks, max_size=max_size, expected_size=expected_size)
        finally:
            self._add("blob writes", began)

    def stat(self, key: str) -> BlobRef:
        began = time.perf_counter()
        try:
            return self.inner.stat(key)
        finally:
            self._add("blob stat", began)

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        began = time.perf_counter()
        try:
            return self.inner.read_range(key, start, stop)
        finally:
            self._add("blob reads", began)

    def read_range_into(self, key: str, start: int, out: memoryview) -> None:
        began = time.perf_counter()
        try:
            self.inner.read_range_into(key, start, out)
        finally:
            self._add("blob reads", began)

    def iter_chunks(self, key: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        return self.inner.iter_chunks(key, start, stop)

    def delete(self, key: str) -> None:
        began = time.perf_counter()
        try:
            self.inner.delete(key)
        finally:
            self._add("blob deletes", began)

    def check(self) -> None:
        self.inner.check()


#: (category, test on "path:function") in order; the first match wins.
_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PRG expansion (AES-CTR keystream)", ("update_into",)),
    ("mask keys (HKDF)", ("kdf/", "hkdf", "derive")),
    ("mask removal adds", ("prg.py:apply_masks",)),
    ("summing uploads", ("add_masked", "masked_sum.py:sum_masked_range")),
    ("decoding", ("encoding.py",)),
    ("strategy (apply_sums)", ("federation/aggregation.py",)),
    ("federation metrics", ("federation/metrics.py",)),
    ("blob I/O (this thread)", ("coordinator/blobs/", "readinto", "fsync", "hashlib", "_io.")),
    ("database", ("sqlalchemy", "psycopg")),
)


@dataclass
class AggregationProfile:
    wall_s: float
    own_s: dict[str, float] = field(default_factory=dict)
    blob_s: dict[str, float] = field(default_factory=dict)
    blob_calls: dict[str, int] = field(default_factory=dict)
    top: list[tuple[str, float]] = field(default_factory=list)


def _category(where: str) -> str:
    for name, needles in _CATEGORIES:
        if any(needle in where for needle in needles):
            return name
    return "other (Python glue: ORM objects, audit, Celery-free task code)"


class InProcessAggregator:
    """The stack's aggregation tasks run in this process (no worker process running), on one
    runtime, so that a warm-up round leaves its caches (SQLAlchemy's compiled statements,
    imports) warm for the profiled one, as in a worker that has served rounds before."""

    def __init__(self, settings: Any) -> None:
        from coordinator.runtime import Runtime

        self.runtime = Runtime.from_settings(settings)
        self.timed = TimedBlobs(self.runtime.blobs)
        self.runtime.blobs = self.timed

    def aggregate(self, round_id: int) -> float:
        """Every slice task of the round, then `finish`, one after the other: seconds."""
        from coordinator import tasks
        from coordinator.rounds.models import UnmaskSlice

        with self.runtime.db.scope() as session:
            indices = session.scalars(
                sa.select(UnmaskSlice.index)
                .where(UnmaskSlice.round_id == round_id)
                .order_by(UnmaskSlice.index)
            ).all()
        began = time.perf_counter()
        for index in indices:
            tasks.unmask_slice(self.runtime, round_id, index)
        tasks.finish_round(self.runtime, round_id)
        return time.perf_counter() - began

    def profile(self, round_id: int, dump: Path | None = None) -> AggregationProfile:
        """`aggregate` under cProfile (see module doc)."""
        self.timed.seconds.clear()
        self.timed.calls.clear()
        profiler = cProfile.Profile()
        profiler.enable()
        wall = self.aggregate(round_id)
        profiler.disable()
        if dump is not None:
            profiler.dump_stats(dump)  # for `python -m pstats` or snakeviz
        stats = pstats.Stats(profiler)
        own: dict[str, float] = defaultdict(float)
        functions: list[tuple[str, float]] = []
        for (path, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
            where = f"{path}:{name}"
            own[_category(where)] += row[2]
            functions.append((where, row[2]))
        functions.sort(key=lambda item: -item[1])
        return AggregationProfile(
            wall_s=wall,
            own_s=dict(own),
            blob_s=dict(self.timed.seconds),
            blob_calls=dict(self.timed.calls),
            top=functions[:12],
        )


def print_profile(profile: AggregationProfile, echo: Any) -> None:
    echo(
        "aggregation profile (one process, slices one after the other):"
        f" {profile.wall_s * 1e3:.0f} ms"
    )
    echo("  own time by kind (cProfile, this thread):")
    for name, seconds in sorted(profile.own_s.items(), key=lambda item: -item[1]):
        echo(f"    {name:<58} {seconds * 1e3:8.1f} ms  {seconds / profile.wall_s:6.1%}")
    echo("  blob store calls (wall, any thread; reads overlap the adds):")
    for name, seconds in sorted(profile.blob_s.items()):
        echo(f"    {name:<58} {seconds * 1e3:8.1f} ms  ({profile.blob_calls[name]} calls)")
    echo("  top functions by own time:")
    for where, seconds in profile.top:
        echo(f"    {where[-70:]:<70} {seconds * 1e3:8.1f} ms")


@dataclass(frozen=True)
class Handoffs:
    dispatch_s: float  # stage opened -> first slice taken
    slices_s: float  # first slice taken -> last slice stored
    finish_s: float  # last slice stored -> stage closed (finish hand-off and finish)
    slices: int


def handoffs(database_url: str, round_id: int, lease_s: float) -> Handoffs:
    """The aggregating stage of a round cut at its slices' timestamps (see module doc)."""
    from coordinator.db import create_db_engine
    from coordinator.rounds.models import RoundStage, RoundStageRecord, UnmaskSlice

    engine = create_db_engine(database_url)
    try:
        with sa.orm.Session(engine) as session:
            stage = session.scalars(
                sa.select(RoundStageRecord).where(
                    RoundStageRecord.round_id == round_id,
                    RoundStageRecord.stage == RoundStage.AGGREGATING,
                )
            ).one()
            rows = session.scalars(
                sa.select(UnmaskSlice).where(UnmaskSlice.round_id == round_id)
            ).all()
            assert stage.closed_at is not None
            opened, closed = stage.opened_at.timestamp(), stage.closed_at.timestamp()
            taken = (
                min(r.lease_expires_at.timestamp() for r in rows if r.lease_expires_at) - lease_s
            )
            done = max(r.finished_at.timestamp() for r in rows if r.finished_at)
    finally:
        engine.dispose()
    return Handoffs(
        dispatch_s=taken - opened, slices_s=done - taken, finish_s=closed - done, slices=len(rows)
    )


def round_id_of(database_url: str, federation: str, number: int) -> int:
    from coordinator.db import create_db_engine
    from coordinator.federations.models import Federation
    from coordinator.rounds.models import Round

    engine = create_db_engine(database_url)
    try:
        with sa.orm.Session(engine) as session:
            found = session.scalar(
                sa.select(Round.id)
                .join(Federation, Federation.id == Round.federation_id)
                .where(Federation.name == federation, Round.number == number)
            )
    finally:
        engine.dispose()
    assert found is not None
    return int(found)
