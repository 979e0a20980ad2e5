"""Where a process's time goes, by sampling every thread's stack (no instrumentation).

`StackSampler` wakes every `interval_s`, reads each thread's current frame
(`sys._current_frames`) and files one sample per thread under the first category whose
code is on that thread's stack (innermost frame first, see `CATEGORIES`), or under `idle`
when the thread is blocked: waiting in Python's own waiting functions (a selector, a lock,
a queue), or, for any other stack, sleeping according to the kernel (`S` in
/proc/self/task/<tid>/stat: a socket read, `time.sleep`; a thread in an fsync is `D`,
busy). Each sample counts for the time since the previous one (on a busy machine the
sampler itself wakes late, so a fixed interval would undercount). A statistical picture,
good to a few samples, with no change to the code being measured.

Run a program under it (the round-latency benchmark runs the coordinator this way with
`--profile`):

    python -m benchmarks.stack_profile --out profile.json -- coordinator serve

runs `fmtl coordinator serve` in this process and, when it exits (SIGTERM included),
writes every busy sample (wall-clock time and category) to `profile.json`, so that a
reader can cut them by the round's stage timestamps (`busy_by_window`).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

#: (category, path fragments): a thread is filed under the first category one of whose
#: fragments appears in the file name of a frame on its stack, looking from the innermost
#: frame outwards; the order of the list breaks ties within one frame.
CATEGORIES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("signature check", ("coordinator/auth/signatures.py", "http_message_signatures")),
    ("crypto (secagg)", ("privacy/secagg/", "cryptography/")),
    ("blob I/O", ("coordinator/blobs/",)),
    ("database", ("sqlalchemy/", "sqlite3/", "psycopg/", "alembic/")),
    ("Celery hand-off", ("celery/", "kombu/")),
    ("aggregation (decode, apply)", ("coordinator/rounds/aggregation.py", "federation/")),
    ("request handling (HTTP, JSON)", ("starlette/", "fastapi/", "uvicorn/", "pydantic/")),
    ("HTTP client", ("httpx/", "httpcore/", "h11/")),
)
#: Innermost functions in which a thread is blocked, not running.
WAITING: Final = frozenset(
    {
        "wait",
        "select",
        "poll",
        "sleep",
        "acquire",
        "_wait_for_tstate_lock",
        "get",
        "accept",
        "recv",
        "recv_into",
        "_worker",
        "run_forever",
        "_run_once",
    }
)
#: Library code whose innermost frame in those functions means waiting, not working.
WAIT_FILES: Final = ("threading.py", "selectors.py", "queue.py", "asyncio/", "socket.py", "ssl.py")


def categorise(frame: FrameType | None) -> str:
    """The category of one thread's stack (see `CATEGORIES`), `idle` when it waits."""
    innermost = frame
    if innermost is not None:
        name = innermost.f_code.co_name
        file = innermost.f_code.co_filename
        if name in WAITING and any(part in file for part in WAIT_FILES):
            return "idle"
    while frame is not None:
        file = frame.f_code.co_filename
        for category, fragments in CATEGORIES:
            if any(part in file for part in fragments):
                return category
        frame = frame.f_back
    return "other Python"


def _sleeping(native_id: int | None) -> bool:
    """Whether the kernel has this thread asleep (state S), not running or in disk I/O."""
    if native_id is None:
        return False
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:  # not Linux, or the thread just ended
        return False
    return fields[0] == b"S"


class StackSampler:
    """Samples every thread but its own every `interval_s`; `seconds()` per category."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.samples: Counter[str] = Counter()
        #: (wall-clock time, category, seconds it stands for) of every busy sample
        self.timeline: list[tuple[float, str, float]] = []
        self.busy: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)
        self.started = 0.0
        self.stopped = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.stopped = time.monotonic()

    def _run(self) -> None:
        me = threading.get_ident()
        previous = time.time()
        while not self._stop.wait(self.interval_s):
            now = time.time()
            # What one sample stands for; capped, so that a stalled sampler does not turn
            # one sample into a long busy stretch.
            weight = min(now - previous, 10 * self.interval_s)
            previous = now
            native = {t.ident: t.native_id for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    category = categorise(frame)
                    if category != "idle" and _sleeping(native.get(ident)):
                        category = "idle"
                    self.samples[category] += 1
                    if category != "idle":
                        self.busy[category] = self.busy.get(category, 0.0) + weight
                        self.timeline.append((now, category, weight))

    def seconds(self) -> dict[str, float]:
        """Busy thread-seconds per category (idle excluded)."""
        return dict(sorted(self.busy.items(), key=lambda item: -item[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--interval-s", type=float, default=0.005)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then fmtl's arguments")
    args = parser.parse_args(argv)
    command = [a for a in args.command if a != "--"] if args.command[:1] == ["--"] else args.command
    sampler = StackSampler(args.interval_s)

    def dump() -> None:
        if sampler.stopped:
            return
        sampler.stop()
        result = {
            "sampled_s": sampler.stopped - sampler.started,
            "interval_s": sampler.interval_s,
            "busy_s": sampler.seconds(),
            "timeline": [(round(t, 4), c, round(w, 4)) for t, c, w in sampler.timeline],
        }
        args.out.write_text(json.dumps(result, indent=2))

    def terminate(*_: object) -> None:
        dump()
        raise SystemExit(0)

    # uvicorn shuts down on SIGTERM, then raises the signal again for the handler it found
    # when it started: this one.
    signal.signal(signal.SIGTERM, terminate)
    from fmtl.cli import main as fmtl_main

    sys.argv = ["fmtl", *command]
    sampler.start()
    try:
        fmtl_main()
        return 0
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    finally:
        if not sampler.stopped:
            dump()


@dataclass(frozen=True)
class Window:
    """A stretch of wall-clock time (a round's stage) and what the sampled process did in
    it: busy thread-seconds per category, and the seconds in which no thread was busy."""

    label: str
    seconds: float
    busy_s: dict[str, float]
    idle_s: float


def busy_by_window(
    timeline: list[tuple[float, str, float]], windows: list[tuple[str, float, float]]
) -> list[Window]:
    """Cut the samples by `(label, start, end)` windows (wall-clock seconds since the
    epoch). `idle_s` is the part of the window in which no thread of the process was busy
    at the sampling instants: the process waited (for agents, the network, a timer)."""
    result = []
    for label, start, end in windows:
        busy: dict[str, float] = {}
        instants: dict[float, float] = {}
        for at, category, weight in timeline:
            if start <= at < end:
                busy[category] = busy.get(category, 0.0) + weight
                instants[at] = weight
        length = max(end - start, 0.0)
        idle = max(length - sum(instants.values()), 0.0)
        result.append(Window(label, length, busy, idle))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
