"""The Celery application: configured from settings, in either deployment.

- `redis://` broker (production): `fmtl coordinator worker` runs worker processes and
  `fmtl coordinator beat` sends the periodic `tick`; the API only enqueues.
- `memory://` broker (embedded): `fmtl coordinator serve` starts an `EmbeddedWorker`, a
  worker thread consuming the in-process queue plus a loop sending `tick`. The tasks,
  their serialisation and their queue are the same; only where they run differs.

Tasks take JSON arguments only, are acknowledged after they finish (`acks_late`) and are
written to be idempotent from database state, so a worker killed mid-task loses nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Final

from celery import Celery, group
from celery.signals import worker_process_init
from celery.worker import WorkController
from celery.worker import state as worker_state

from coordinator.rounds.followups import (
    ADVANCE_TASK,
    DISCARD_TASK,
    FINISH_TASK,
    SLICE_TASK,
    Followup,
)
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from coordinator.tasks import (
    advance_round,
    discard_round_blobs,
    finish_round,
    tick,
    unmask_slice,
)

logger = logging.getLogger(__name__)

TICK_TASK: Final = "fmtl.tick"
#: How long `EmbeddedWorker.start()` waits for the consumer to be ready, and `stop()` for
#: the thread to finish its current task.
EMBEDDED_START_TIMEOUT_S: Final = 30.0
#: How often the embedded worker looks at its in-memory queue (seconds).
EMBEDDED_POLL_INTERVAL_S: Final = 0.02
EMBEDDED_STOP_TIMEOUT_S: Final = 30.0


class CoordinatorCelery(Celery):  # type: ignore[misc]
    """A Celery app that carries the coordinator runtime its tasks work with."""

    runtime: Runtime


def create_celery(settings: Settings, runtime: Runtime | None = None) -> CoordinatorCelery:
    # kombu wants a host even for its in-memory transport.
    broker = "memory://localhost//" if settings.embedded_worker else settings.broker_url
    app = CoordinatorCelery("fmtl-coordinator", broker=broker, set_as_current=False)
    app.runtime = runtime if runtime is not None else Runtime.from_settings(settings)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # effects land in the database, never in a result backend
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
        beat_schedule={
            "tick": {"task": TICK_TASK, "schedule": settings.tick_interval_s},
        },
        beat_schedule_filename=str(settings.state_dir / "celerybeat-schedule"),
    )
    if settings.embedded_worker:
        # kombu's in-memory transport polls its queue (every 1 s by default); each protocol
        # stage hands over through a task, so poll fast enough not to add seconds per round.
        app.conf.broker_transport_options = {"polling_interval": EMBEDDED_POLL_INTERVAL_S}

    # shared=False: a shared task would be registered on every later app too, bound to
    # this app's runtime (another database) through the closure.
    @app.task(name=TICK_TASK, shared=False)  # type: ignore[untyped-decorator]
    def _tick() -> dict[str, Any]:
        report = tick(app.runtime)
        send_followups(app, report.followups)
        return {
            "nonces_purged": report.nonces_purged,
            "overdue_rounds": list(report.overdue_rounds),
            "started_rounds": list(report.started_rounds),
        }

    @app.task(name=ADVANCE_TASK, shared=False)  # type: ignore[untyped-decorator]
    def _advance(round_id: int) -> None:
        send_followups(app, advance_round(app.runtime, round_id))

    @app.task(name=SLICE_TASK, shared=False)  # type: ignore[untyped-decorator]
    def _unmask_slice(round_id: int, index: int) -> None:
        send_followups(app, unmask_slice(app.runtime, round_id, index))

    @app.task(name=FINISH_TASK, shared=False)  # type: ignore[untyped-decorator]
    def _finish(round_id: int) -> None:
        send_followups(app, finish_round(app.runtime, round_id))

    @app.task(name=DISCARD_TASK, shared=False)  # type: ignore[untyped-decorator]
    def _discard(round_id: int) -> None:
        send_followups(app, discard_round_blobs(app.runtime, round_id))

    def _forget_parent_pool(**_: object) -> None:
        app.runtime.db.forget_after_fork()

    # A prefork child must not reuse the connections it inherited from its parent.
    worker_process_init.connect(_forget_parent_pool, weak=False)
    app.finalize()
    return app


class FollowupDispatcher:
    """The API process's `FollowupSink`: a stage that the request completed is closed right
    here, in the request, once its transaction committed (no hand-off through the broker:
    HTTP -> protocol -> engine); everything else (unmasking slices, deadline countdowns,
    blob clean-up) goes to the workers through Celery."""

    def __init__(self, app: CoordinatorCelery) -> None:
        self.app = app

    def send(self, followups: Sequence[Followup]) -> None:
        queued: list[Followup] = []
        pending = list(followups)
        while pending:
            followup = pending.pop(0)
            if followup.task == ADVANCE_TASK and not followup.countdown:
                pending += advance_round(self.app.runtime, followup.args[0])
            else:
                queued.append(followup)
        send_followups(self.app, queued)


def send_followups(app: Celery, followups: Sequence[Followup]) -> None:
    """Send the tasks a committed transaction asked for; unmasking slices go as one group.

    A send that fails is logged and left to the periodic tick, which finds the work again
    from the database.
    """
    slices = [f for f in followups if f.task == SLICE_TASK]
    try:
        if slices:
            group(app.signature(f.task, args=f.args) for f in slices).apply_async()
        for followup in followups:
            if followup.task != SLICE_TASK:
                app.send_task(followup.task, args=followup.args, countdown=followup.countdown)
    except Exception:
        logger.exception("could not send follow-up tasks; the tick will resend them")


def check_broker(app: Celery, timeout_s: float = 3.0) -> None:
    """Raise if the broker cannot be reached (readiness probe)."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout_s)


class EmbeddedWorker:
    """A Celery worker thread and a tick loop inside the API process (embedded mode)."""

    def __init__(self, app: CoordinatorCelery, tick_interval_s: float) -> None:
        self.app = app
        self.tick_interval_s = tick_interval_s
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._controller: WorkController | None = None
        self._worker_thread: threading.Thread | None = None
        self._tick_thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return (
            self._worker_thread is not None
            and self._worker_thread.is_alive()
            and self._ready.is_set()
            and not self._stopping.is_set()
        )

    def start(self) -> None:
        ready = self._ready

        class _Controller(WorkController):  # type: ignore[misc]
            def on_consumer_ready(self, consumer: object) -> None:
                ready.set()

        self._controller = _Controller(
            app=self.app,
            pool_cls="solo",
            concurrency=1,
            hostname=f"embedded@{self.app.conf.task_default_queue}",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel=logging.WARNING,
        )
        controller = self._controller

        def run() -> None:
            # Celery resolves tasks through the thread's current app when it executes them,
            # and countdown (ETA) tasks run on Celery's timer thread, which sees only the
            # process-wide default app: make ours both (one coordinator app per process).
            self.app.set_current()
            self.app.set_default()
            controller.start()

        self._worker_thread = threading.Thread(target=run, name="fmtl-embedded-worker", daemon=True)
        self._worker_thread.start()
        if not self._ready.wait(EMBEDDED_START_TIMEOUT_S):
            raise RuntimeError("the embedded Celery worker did not start")
        self._tick_thread = threading.Thread(
            target=self._tick_loop, name="fmtl-embedded-beat", daemon=True
        )
        self._tick_thread.start()

    def _tick_loop(self) -> None:
        while not self._stopping.wait(self.tick_interval_s):
            try:
                self.app.send_task(TICK_TASK)
            except Exception:  # keep ticking: the next period retries
                logger.exception("could not send the periodic tick")

    def stop(self) -> None:
        self._stopping.set()
        if self._tick_thread is not None:
            self._tick_thread.join(EMBEDDED_STOP_TIMEOUT_S)
        if self._worker_thread is not None:
            # The consumer loop polls this flag; 0 means a clean (warm) stop.
            worker_state.should_terminate = 0
            self._worker_thread.join(EMBEDDED_STOP_TIMEOUT_S)
            worker_state.should_terminate = None
            if self._worker_thread.is_alive():
                logger.warning("the embedded worker did not stop in time")
