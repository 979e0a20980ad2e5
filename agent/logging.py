"""Structured logs of the agent: one event per line, as text or as JSON.

Every log record is an *event* (a short snake_case name such as `round_joined`) with typed
fields (`round=3`, `stage="share_keys"`). `--log-format json` writes one JSON object per
line for a log shipper; `text` writes `time level event key=value ...` for people.

Nothing secret or private is ever logged: fields are scalars the caller chose, and the
`_redact` guard drops any field whose name says it could hold a secret or an update
(passphrase, token, key material, shares, seeds, vectors), whatever the caller passed.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final, TextIO

#: The logger every agent module logs to (children: `fmtl.agent.<module>`).
ROOT_LOGGER: Final = "fmtl.agent"
#: Modules that log with `logging.getLogger(__name__)` (`agent.round_participant`, ...).
_PACKAGE_LOGGER: Final = "agent"

#: Field names never written, whatever their value (defence in depth: callers never pass
#: them, this makes sure a mistake cannot leak a secret or an update into a log file).
_SECRET_WORDS: Final = (
    "passphrase",
    "password",
    "token",
    "secret",
    "private",
    "share",
    "seed",
    "vector",
    "update",
    "mask",
    "gradient",
)
_SCALARS: Final = (str, int, float, bool, type(None))
#: Longest text value written (a runaway message is cut, never a log line per megabyte).
_MAX_TEXT: Final = 500


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def _redact(fields: Mapping[str, object]) -> dict[str, object]:
    clean: dict[str, object] = {}
    for name, value in fields.items():
        lowered = name.lower()
        if any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(
            ("_count", "_id")
        ):
            clean[name] = "[redacted]"
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        if isinstance(value, _SCALARS):
            if isinstance(value, str) and len(value) > _MAX_TEXT:
                value = value[:_MAX_TEXT] + "..."
            clean[name] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int)) for v in value):
            clean[name] = list(value)[:64]
        else:  # arrays, bytes, objects: never dumped
            clean[name] = f"<{type(value).__name__}>"
    return clean


def _fields(record: logging.LogRecord) -> dict[str, object]:
    raw = getattr(record, "fields", None)
    return _redact(raw) if isinstance(raw, Mapping) else {}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "logger": ..., "event": ..., <fields>}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name, value in _fields(record).items():
            document.setdefault(name, value)
        if record.exc_info and record.exc_info[0] is not None:
            # The type and message only: a traceback may show local values.
            document["error_type"] = record.exc_info[0].__name__
        return json.dumps(document, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`2026-11-29T07:00:00.000Z info  round_joined round=3 participants=4`."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), f"{record.levelname.lower():<7}", record.getMessage()]
        for name, value in _fields(record).items():
            text = json.dumps(value) if isinstance(value, str) and " " in value else value
            parts.append(f"{name}={text}")
        if record.exc_info and record.exc_info[0] is not None:
            parts.append(f"error_type={record.exc_info[0].__name__}")
        return " ".join(str(part) for part in parts)


def configure(
    log_format: LogFormat | str = LogFormat.TEXT,
    *,
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
) -> logging.Logger:
    """Send the agent's events to `stream` (stderr) in `log_format`; returns the root logger."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter() if LogFormat(log_format) is LogFormat.JSON else TextFormatter()
    )
    handler.setFormatter(formatter)
    # Our events, and the plain messages of the agent package's other modules (the round
    # participant, the coordinator client), in the same format on the same stream.
    for name in (ROOT_LOGGER, _PACKAGE_LOGGER):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return logging.getLogger(ROOT_LOGGER)


def get_logger(name: str) -> logging.Logger:
    """The logger of one agent module (`get_logger("daemon")` -> `fmtl.agent.daemon`)."""
    return logging.getLogger(f"{ROOT_LOGGER}.{name}")


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log the event `name` with `fields` (scalars; secret-looking names are redacted)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


__all__ = [
    "ROOT_LOGGER",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure",
    "event",
    "get_logger",
]
