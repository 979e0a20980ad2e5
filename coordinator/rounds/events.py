"""Round events: agents waiting on `GET /agent/v1/work` learn of a stage change at once.

A transaction that moves a round to another stage (`service.enter_stage`) marks the round's
federation in its session (`mark_changed`); once that transaction has *committed*, the
database's commit hook (`Runtime.from_settings`) hands the marked federations to the
process's `RoundEvents`, which

- wakes every request of this process long-polling for work in those federations, and
- with a Redis broker, publishes them on the channel `<queue>:round-events`, where every API
  process subscribes (`RedisSubscriber`) and wakes its own waiting requests in turn: a stage
  closed by a worker process reaches an agent waiting on any API replica.

An event only says "look again": the woken request reads the agent's assignment from the
database, so a lost or duplicated event costs at most one re-read (and a waiting request
re-reads on its own every `FMTL_WORK_RECHECK_S` (5 s) regardless: nothing depends on
delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

#: The session.info key holding the federations whose rounds changed in this transaction.
CHANGED_KEY: Final = "fmtl.round_events"
#: How long the Redis subscriber waits before reconnecting after an error.
RECONNECT_S: Final = 1.0


def mark_changed(session: Session, federation_id: int) -> None:
    """Note, in the transaction, that a round of this federation changed stage."""
    session.info.setdefault(CHANGED_KEY, set()).add(int(federation_id))


def take_changed(session: Session) -> set[int]:
    changed: set[int] = session.info.pop(CHANGED_KEY, set())
    return changed


@dataclass(eq=False)
class Waiter:
    """One waiting request: an asyncio event set (thread-safely) on a matching change."""

    federation_id: int
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, timeout_s: float) -> bool:
        """True when woken, False after `timeout_s`."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout_s)
        except TimeoutError:
            return False
        self.event.clear()
        return True


class RoundEvents:
    """This process's waiting requests, and where committed changes are published."""

    def __init__(self, redis_url: str | None = None, channel: str = "fmtl:round-events") -> None:
        self.redis_url = redis_url
        self.channel = channel
        self._lock = threading.Lock()
        self._waiters: dict[int, set[Waiter]] = {}
        self._redis: Any = None
        self._redis_pid: int | None = None

    # -- waiting (API process) ---------------------------------------------------------------

    @contextlib.contextmanager
    def listen(self, federation_id: int) -> Iterator[Waiter]:
        """Register before reading the state, so that no change in between is missed."""
        waiter = Waiter(federation_id, asyncio.get_running_loop())
        with self._lock:
            self._waiters.setdefault(federation_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiting = self._waiters.get(federation_id)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[federation_id]

    def waiting(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    def wake(self, federation_ids: Iterable[int]) -> None:
        """Wake this process's requests waiting on these federations (any thread)."""
        with self._lock:
            woken = [w for fid in federation_ids for w in self._waiters.get(fid, ())]
        for waiter in woken:
            waiter.wake()

    # -- publishing (any process, after a commit) ------------------------------------------

    def publish(self, federation_ids: set[int]) -> None:
        """Committed changes: wake local waiters, and tell the other processes."""
        if not federation_ids:
            return
        self.wake(federation_ids)
        if self.redis_url is None:
            return
        try:
            client = self._client()
            for federation_id in sorted(federation_ids):
                client.publish(self.channel, str(federation_id))
        except Exception:  # agents still re-read on their own: log, never fail the commit
            logger.warning("could not publish round events", exc_info=True)

    def _client(self) -> Any:
        if self._redis is None or self._redis_pid != os.getpid():  # not across fork()
            import redis

            self._redis = redis.Redis.from_url(self.redis_url or "", socket_timeout=2)
            self._redis_pid = os.getpid()
        return self._redis


class RedisSubscriber:
    """A thread of an API process relaying `<queue>:round-events` to its `RoundEvents`."""

    def __init__(self, events: RoundEvents) -> None:
        self.events = events
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fmtl-round-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        import redis

        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.events.redis_url or "", socket_timeout=5)
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self.events.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        with contextlib.suppress(ValueError):
                            self.events.wake([int(message["data"])])
                pubsub.close()
                client.close()
            except Exception:
                logger.warning("round events: subscription lost, reconnecting", exc_info=True)
                self._stop.wait(RECONNECT_S)
