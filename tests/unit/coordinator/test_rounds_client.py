"""The agent's coordinator client and round state: retries, typed errors, state round trips."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.coordinator_client import (
    BadResponse,
    CoordinatorClient,
    CoordinatorUnreachable,
    Rejected,
)
from agent.round_state import DamagedState, InMemoryRoundStateStore, ParticipantState
from federation.round_api import (
    MODEL_DTYPE_HEADER,
    MODEL_LAYOUT_HEADER,
    MODEL_SHA256_HEADER,
    MODEL_VERSION_HEADER,
    WorkStatus,
)


def client_with(handler: httpx.MockTransport, retries: int = 3) -> CoordinatorClient:
    return CoordinatorClient(
        "http://coordinator.test",
        Ed25519PrivateKey.generate(),
        "7",
        retries=retries,
        backoff_s=0.01,
        transport=handler,
        sleep=lambda seconds: None,
    )


def test_unavailable_answers_are_retried_with_a_fresh_signature_each_time() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["signature-input"])
        if len(seen) < 3:
            return httpx.Response(503)
        return httpx.Response(200, json=WorkStatus().model_dump(mode="json"))

    status = client_with(httpx.MockTransport(handle)).work()
    assert status.assignment is None
    assert len(seen) == 3
    assert len(set(seen)) == 3  # each retry signed anew (new nonce)


def test_client_errors_are_never_retried_and_carry_the_problem() -> None:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(409, json={"status": 409, "detail": "the stage moved on"})

    with pytest.raises(Rejected) as refused:
        client_with(httpx.MockTransport(handle)).advertise_keys(1, b"advert")
    assert calls == 1
    assert refused.value.status == 409
    assert refused.value.detail == "the stage moved on"


def test_an_unreachable_coordinator_is_a_typed_error_after_the_retries() -> None:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(CoordinatorUnreachable, match="after 3 attempts"):
        client_with(httpx.MockTransport(handle), retries=2).work()
    assert calls == 3


def test_a_model_download_is_float32_on_the_wire_and_checked_against_its_digest() -> None:
    # The model is stored as float32: it travels as such (half the bytes of float64).
    vector = np.arange(6, dtype="<f4")
    content = vector.tobytes()
    asked: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("dtype"))
        digest = hashlib.sha256(content).hexdigest()
        if request.url.path.endswith("/2/model"):
            digest = "0" * 64
        return httpx.Response(
            200,
            content=content,
            headers={
                MODEL_SHA256_HEADER: digest,
                MODEL_DTYPE_HEADER: "float32",
                MODEL_VERSION_HEADER: "4",
                MODEL_LAYOUT_HEADER: "abc",
            },
        )

    client = client_with(httpx.MockTransport(handle))
    model = client.global_model(1)
    assert model.version == 4
    assert asked == ["float32"]
    assert model.vector.dtype == np.float64
    np.testing.assert_array_equal(model.vector, vector.astype(np.float64))
    with pytest.raises(BadResponse, match="SHA-256"):
        client.global_model(2)


def test_round_state_round_trips_and_damage_is_detected() -> None:
    state = ParticipantState(
        "heart",
        3,
        decision="join",
        client_state=b"\x00secret",
        masked_update=b"SAMI" + bytes(100),
        report=b'{"tasks":{}}',
    )
    store = InMemoryRoundStateStore()
    key = ParticipantState.key("heart", 3)
    store.save(key, state.to_bytes())
    assert ParticipantState.from_bytes(store.load(key) or b"") == state
    assert "secret" not in repr(state)
    with pytest.raises(DamagedState):
        ParticipantState.from_bytes(b"garbage")
    store.delete(key)
    assert store.load(key) is None
