"""Structured logs: JSON lines or text, and nothing secret whatever a caller passes."""

from __future__ import annotations

import io
import json
import logging

import numpy as np

from agent.logging import LogFormat, configure, event, get_logger


def test_json_lines_carry_the_event_and_its_fields() -> None:
    stream = io.StringIO()
    configure(LogFormat.JSON, stream=stream)
    event(get_logger("test"), "round_joined", round=3, noise_multiplier=1.2, stage="share_keys")
    document = json.loads(stream.getvalue())
    assert document["event"] == "round_joined"
    assert document["round"] == 3
    assert document["logger"] == "fmtl.agent.test"
    assert document["level"] == "info"
    assert document["ts"].endswith("Z")


def test_secrets_and_updates_are_never_written() -> None:
    stream = io.StringIO()
    configure(LogFormat.JSON, stream=stream)
    event(
        get_logger("test"),
        "careless",
        passphrase="hunter2",
        token="fmtl_enroll_abc",
        masked_update=b"\x01\x02",
        seed=123456,
        weights=np.arange(5.0),
        key_id="7",
    )
    text = stream.getvalue()
    for leaked in ("hunter2", "fmtl_enroll_abc", "123456", "0.0, 1.0"):
        assert leaked not in text
    document = json.loads(text)
    assert document["weights"] == "<ndarray>"
    assert document["key_id"] == "7"


def test_text_format_is_one_readable_line() -> None:
    stream = io.StringIO()
    configure(LogFormat.TEXT, stream=stream)
    event(get_logger("test"), "round_declined", level=30, round=4, reason="budget")
    line = stream.getvalue().strip()
    assert "\n" not in line
    assert "warning" in line
    assert "round_declined round=4 reason=budget" in line


def test_messages_of_other_agent_modules_share_the_format() -> None:
    stream = io.StringIO()
    configure(LogFormat.JSON, stream=stream)
    logging.getLogger("agent.round_participant").warning("leaving round %s: %s", 3, "why")
    document = json.loads(stream.getvalue())
    assert document["event"] == "leaving round 3: why"
    assert document["logger"] == "agent.round_participant"
    assert document["level"] == "warning"
