"""The demo's child processes: started with their own log file, watched, stopped cleanly.

Every child runs in a session of its own, so a Ctrl-C in the terminal reaches only the demo,
which then stops its children in order (agents first, the coordinator last): SIGTERM, a
grace period, then SIGKILL. A child that exits when nobody asked it to is a `ChildFailed`
naming its log file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

#: How long a child gets to finish after SIGTERM before it is killed.
STOP_GRACE_S: Final = 15.0


class DemoError(Exception):
    """The demo cannot go on; `str()` is one line that says what happened and what to read."""


class ChildFailed(DemoError):
    """A child process exited on its own."""


def fmtl_command(*args: str) -> list[str]:
    """`fmtl ARGS...` with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "fmtl", *args]


def child_environment(variables: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any FMTL_* setting, plus `variables`.

    The demo decides every setting of its children; a stray FMTL_DATABASE_URL in the user's
    shell must not point the demo's coordinator at a production database.
    """
    base = {key: value for key, value in os.environ.items() if not key.startswith("FMTL_")}
    base["PYTHONUNBUFFERED"] = "1"
    return {**base, **variables}


@dataclass
class Child:
    """One running child process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    #: Set when the demo stops it on purpose (a dropout, or shutdown): not a failure.
    expected_exit: bool = False

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL at once (a crash, as far as the rest of the system can tell)."""
        self.expected_exit = True
        self.signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        self.expected_exit = True
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()


@dataclass
class Children:
    """The demo's children, in start order."""

    log_dir: Path
    items: list[Child] = field(default_factory=list)

    def start(
        self, name: str, command: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as sink:
            process = subprocess.Popen(  # noqa: S603 - our own command line, no shell
                list(command),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name=name, process=process, log=log)
        self.items.append(child)
        return child

    def check(self) -> None:
        """Raise `ChildFailed` if a child exited without being asked to."""
        for child in self.items:
            if not child.expected_exit and child.process.poll() is not None:
                raise ChildFailed(
                    f"{child.name} exited with status {child.process.returncode}: "
                    f"read {child.log}{last_line_hint(child.log)}"
                )

    def stop_all(self) -> None:
        """Stop every child, the most recently started first, each by its own process group."""
        for child in reversed(self.items):
            child.expected_exit = True
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in reversed(self.items):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
                child.process.wait()


def last_line_hint(log: Path) -> str:
    """` (last line: ...)` of a log, to put the likely cause in the one-line error."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    if not lines:
        return ""
    last = lines[-1]
    return f" (last line: {last[:200]})"


def run_once(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    log_dir: Path,
    *,
    timeout_s: float = 300.0,
    cwd: Path | None = None,
) -> str:
    """Run a short command to completion; its stdout, or `ChildFailed` naming its log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    try:
        done = subprocess.run(  # noqa: S603 - our own command line, no shell
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        log.write_bytes(exc.stderr or b"")  # what it wrote before it was stopped
        raise ChildFailed(f"{name} did not finish in {timeout_s:.0f} s: read {log}") from None
    # stdout may hold a secret (a token): only stderr goes to the log.
    log.write_bytes(done.stderr)
    if done.returncode != 0:
        raise ChildFailed(
            f"{name} failed with status {done.returncode}: read {log}{last_line_hint(log)}"
        )
    return done.stdout.decode("utf-8", errors="replace")
