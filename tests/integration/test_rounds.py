"""Rounds on the real stack: `fmtl coordinator serve` and `worker` (and `beat` where deadlines
or recovery need the tick) on PostgreSQL and Redis; in-test agents are `RoundParticipant`s
with a trivial `LocalWork`, speaking the signed HTTP API over loopback.

Small models keep every round to a few seconds; stage deadlines are a few seconds where a
test waits for one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from agent.coordinator_client import CoordinatorClient, Rejected
from agent.identity import public_key_bytes
from agent.round_participant import Outcome, RoundParticipant
from agent.round_policy import RoundPolicy
from agent.round_state import InMemoryRoundStateStore
from coordinator.db import Database
from coordinator.rounds.models import SliceState, UnmaskSlice
from federation.spec import FederationSpec
from privacy.secagg import MaskedInput, RoundConfig
from tests.round_support import FixedDeltaWork, expected_metrics, expected_model, small_deltas
from tests.seaweedfs import SeaweedS3

from .conftest import (
    SERVER_START_DEADLINE_S,
    AgentIdentity,
    CoordinatorEnv,
    CoordinatorServer,
    WorkerProcess,
    _log_tail,
    _stop,
    enroll_over_http,
    free_port,
    wait_until,
)

ROUND_DEADLINE_S = 60.0
HELD = (["disease", "severity"], ["disease"], ["severity"], ["disease"])


@pytest.fixture(autouse=True)
def _round_settings(coordinator_env: CoordinatorEnv) -> None:
    """Settings every process of these tests shares: small slices, short leases, fast tick."""
    coordinator_env.variables.update(
        {
            "FMTL_UNMASK_SLICE_COORDINATES": "1024",
            "FMTL_SLICE_LEASE_S": "3",
            "FMTL_TICK_INTERVAL_S": "1",
            "FMTL_WORK_POLL_INTERVAL_S": "0.2",
        }
    )


def spec_document(
    name: str, *, input_dim: int = 13, stage_timeout_s: float = 30.0
) -> dict[str, Any]:
    return {
        "name": name,
        "tasks": [
            {"name": "disease", "kind": "binary"},
            {"name": "severity", "kind": "multiclass", "n_classes": 5},
        ],
        "model": {"encoder": {"kind": "mlp", "input_dim": input_dim, "hidden": [16, 8]}},
        "schedule": {"min_participants": 3, "stage_timeout_s": stage_timeout_s},
    }


@dataclass
class Federation:
    name: str
    spec: FederationSpec
    agents: list[AgentIdentity]
    works: list[FixedDeltaWork]
    admin: dict[str, str]


def make_federation(
    server: CoordinatorServer, admin_token: str, document: dict[str, Any], n: int
) -> Federation:
    admin = {"Authorization": f"Bearer {admin_token}"}
    created = httpx.post(
        f"{server.url}/api/v1/federations", json=document, headers=admin, timeout=10
    )
    assert created.status_code == 201, created.text
    spec = FederationSpec.model_validate(document)
    agents = [
        enroll_over_http(server.url, admin_token, spec.name, f"site_{i}", HELD[i % 4])
        for i in range(n)
    ]
    deltas = small_deltas(spec, n)
    works = [
        FixedDeltaWork(spec, deltas[i], dict.fromkeys(HELD[i % 4], 10), seed=i) for i in range(n)
    ]
    return Federation(spec.name, spec, agents, works, admin)


def participants(url: str, federation: Federation) -> list[RoundParticipant]:
    return [
        RoundParticipant(
            CoordinatorClient(
                url, agent.private_key, agent.profile.key_id, retries=8, backoff_s=0.2
            ),
            agent.private_key,
            InMemoryRoundStateStore(),
            work,
            policy=RoundPolicy(agent.profile, public_key_bytes(agent.private_key)),
        )
        for agent, work in zip(federation.agents, federation.works, strict=True)
    ]


def start_round(url: str, federation: Federation) -> dict[str, Any]:
    started = httpx.post(
        f"{url}/api/v1/federations/{federation.name}/rounds", headers=federation.admin, timeout=30
    )
    assert started.status_code == 201, started.text
    body: dict[str, Any] = started.json()
    return body


def read_round(url: str, federation: Federation, number: int) -> dict[str, Any]:
    found = httpx.get(
        f"{url}/api/v1/federations/{federation.name}/rounds/{number}",
        headers=federation.admin,
        timeout=10,
    )
    assert found.status_code == 200, found.text
    body: dict[str, Any] = found.json()
    return body


class AgentCrashed(Exception):
    """Raised by `CrashingWork.train`: the agent process died mid-round."""


class CrashingWork(FixedDeltaWork):
    """An agent that shares its keys, then dies while training (never uploads)."""

    def train(self, assignment: Any, global_vector: Any) -> Any:
        raise AgentCrashed("the agent died while training")


def drive(
    url: str,
    federation: Federation,
    parts: list[RoundParticipant],
    number: int,
    until: Callable[[dict[str, Any]], bool],
    what: str,
) -> dict[str, Any]:
    """Step every participant, polling the round, until `until(round)` holds."""
    latest: dict[str, Any] = {}

    def done() -> bool:
        nonlocal latest
        for part in parts:
            with contextlib.suppress(AgentCrashed):  # a dead agent says nothing more
                part.step()
        latest = read_round(url, federation, number)
        return until(latest) or latest["stage"] == "failed"

    wait_until(done, ROUND_DEADLINE_S, what)
    return latest


def model_vector(url: str, federation: Federation, version: int) -> np.ndarray:  # type: ignore[type-arg]
    got = httpx.get(
        f"{url}/api/v1/federations/{federation.name}/models/{version}/vector",
        headers=federation.admin,
        timeout=30,
    )
    assert got.status_code == 200, got.text
    return np.frombuffer(got.content, dtype="<f4").astype(np.float64)


def assert_aggregate(url: str, federation: Federation, works: list[FixedDeltaWork]) -> None:
    base = model_vector(url, federation, 0)
    expected = expected_model(federation.spec, base, works)
    np.testing.assert_allclose(model_vector(url, federation, 1), expected, atol=2e-6)


def completed(round_: dict[str, Any]) -> bool:
    return bool(round_["stage"] == "completed")


# --- processes ---------------------------------------------------------------------------------


def start_process(
    env: CoordinatorEnv, args: list[str], log: Path, **extra: str
) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "fmtl", "coordinator", *args],
            env=env.process_env(**extra),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def start_server(env: CoordinatorEnv, log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    process = start_process(env, ["serve"], log, FMTL_HOST="127.0.0.1", FMTL_PORT=str(port))
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the coordinator exited ({process.returncode}):\n{_log_tail(log)}")
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, SERVER_START_DEADLINE_S, "the restarted coordinator's /readyz")
    return url, process


def kill_with_children(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and its pool processes (by pid), as a crashed machine would."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    pids = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    process.send_signal(signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(10)


@pytest.fixture
def beat(coordinator_env: CoordinatorEnv, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`fmtl coordinator beat`: sends the tick every second (deadlines, slice recovery)."""
    process = start_process(coordinator_env, ["beat"], tmp_path / "beat.log")
    yield process
    _stop(process)


# --- tests -------------------------------------------------------------------------------------


def test_a_complete_round_stores_the_expected_aggregate(
    coordinator_server: CoordinatorServer, celery_worker: WorkerProcess, admin_token: str
) -> None:
    url = coordinator_server.url
    federation = make_federation(coordinator_server, admin_token, spec_document("complete"), 3)
    federation.works[0].share_own_metrics = True  # site_0 opts in; the others do not
    parts = participants(url, federation)
    number = start_round(url, federation)["number"]
    done = drive(url, federation, parts, number, completed, "the round to complete")
    assert done["stage"] == "completed", done["failure_reason"]
    assert [p["status"] for p in done["participant_list"]] == ["completed"] * 3
    assert_aggregate(url, federation, federation.works)
    results = httpx.get(
        f"{url}/api/v1/federations/{federation.name}/results",
        headers=federation.admin,
        timeout=10,
    ).json()
    assert {r["institution"] for r in results} == {None, "site_0"}
    assert {r["task"] for r in results if r["scope"] == "institution"} == {"disease", "severity"}
    # Federation-wide: the metrics of the three sites' pooled validation statistics, as
    # the secure sum carried them (disease: sites 0 and 1; severity: sites 0 and 2).
    expected = expected_metrics(federation.spec, federation.works)
    wide = [r for r in results if r["scope"] == "federation"]
    assert {r["task"] for r in wide} == {"disease", "severity"}
    for row in wide:
        result = expected[row["task"]]
        assert (row["n_samples"], row["institutions"]) == (result.n, 2)
        if row["metric"] == "auc_error_bound":
            assert row["value"] == result.auc_error_bound
        else:
            assert row["value"] == pytest.approx(result.values[row["metric"]], abs=1e-4)
    ledger = httpx.get(f"{url}/api/v1/ledger", headers=federation.admin, timeout=10).json()
    assert len([row for row in ledger if row["federation"] == federation.name]) == 3
    assert [p.step().outcome for p in parts] == [Outcome.COMPLETED] * 3


def test_a_round_with_its_blobs_in_an_s3_store_needs_no_shared_folder(
    s3_blob_env: dict[str, str],
    s3_server: SeaweedS3,
    namespace: str,
    coordinator_env: CoordinatorEnv,
    tmp_path: Path,
) -> None:
    # API and worker get different state folders: the only place they share is the bucket.
    coordinator_env.variables.update(s3_blob_env)
    api_env = CoordinatorEnv(
        {**coordinator_env.variables, "FMTL_STATE_DIR": str(tmp_path / "api")}, tmp_path / "api"
    )
    worker_env = CoordinatorEnv(
        {**coordinator_env.variables, "FMTL_STATE_DIR": str(tmp_path / "worker")},
        tmp_path / "worker",
    )
    token = api_env.cli("create-token", "--role", "admin").stdout.strip()
    url, server = start_server(api_env, tmp_path / "serve.log")
    worker = start_process(worker_env, ["worker", "--concurrency", "1"], tmp_path / "worker.log")
    try:
        server_info = CoordinatorServer(url, api_env, server, tmp_path / "serve.log")
        federation = make_federation(server_info, token, spec_document("objects"), 3)
        parts = participants(url, federation)
        number = start_round(url, federation)["number"]
        done = drive(url, federation, parts, number, completed, "the round to complete")
        assert done["stage"] == "completed", done["failure_reason"]
        assert_aggregate(url, federation, federation.works)
    finally:
        _stop(worker)
        _stop(server)
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{namespace}/")  # type: ignore[attr-defined]
    keys = sorted(item["Key"].removeprefix(f"{namespace}/") for item in listed["Contents"])
    # The two model versions stay; the round's uploads and slices were deleted after it.
    assert keys == ["models/objects/v000000.bin", "models/objects/v000001.bin"], keys
    assert not (tmp_path / "api" / "blobs").exists()
    assert not (tmp_path / "worker" / "blobs").exists()


def test_a_dropout_after_share_keys_and_a_decline_leave_the_round_to_the_others(
    coordinator_server: CoordinatorServer, celery_worker: WorkerProcess, admin_token: str
) -> None:
    url = coordinator_server.url
    document = spec_document("dropout", stage_timeout_s=4.0)
    federation = make_federation(coordinator_server, admin_token, document, 6)  # t = 4
    federation.works[5].decline_reason = "budget"
    # site_4 shares its keys, then dies: the masked input closes at its deadline without it.
    crashing = federation.works[4]
    federation.works[4] = CrashingWork(crashing.spec, crashing.delta, crashing.labelled)
    parts = participants(url, federation)
    number = start_round(url, federation)["number"]
    done = drive(url, federation, parts, number, completed, "the round to complete")
    assert done["stage"] == "completed", done["failure_reason"]
    statuses = {
        p["secagg_id"]: (p["status"], p["dropped_at_stage"]) for p in done["participant_list"]
    }
    assert statuses[5] == ("dropped", "masked_input")
    assert statuses[6] == ("declined", "advertise_keys")
    assert_aggregate(url, federation, federation.works[:4])


def test_a_round_below_threshold_fails_cleanly_with_its_reason(
    coordinator_server: CoordinatorServer, celery_worker: WorkerProcess, admin_token: str
) -> None:
    url = coordinator_server.url
    document = spec_document("below", stage_timeout_s=2.0)
    federation = make_federation(coordinator_server, admin_token, document, 3)
    parts = participants(url, federation)
    number = start_round(url, federation)["number"]
    done = drive(url, federation, parts[:1], number, lambda r: False, "the round to fail")
    assert done["stage"] == "failed"
    assert "advertise_keys" in done["failure_reason"]
    assert "threshold" in done["failure_reason"] or "2" in done["failure_reason"]
    assert parts[0].step().outcome is Outcome.FAILED
    # A new round can start after a failed one.
    assert start_round(url, federation)["number"] == number + 1


def test_a_tampered_upload_is_rejected_and_changes_nothing(
    coordinator_server: CoordinatorServer, celery_worker: WorkerProcess, admin_token: str
) -> None:
    url = coordinator_server.url
    federation = make_federation(coordinator_server, admin_token, spec_document("tamper"), 3)
    parts = participants(url, federation)
    number = start_round(url, federation)["number"]
    drive(url, federation, parts, number, lambda r: r["stage"] == "masked_input", "masked input")
    agent = federation.agents[0]
    assignment = parts[0].client.work().assignment
    assert assignment is not None
    config = RoundConfig.from_bytes(assignment.config)
    vector = np.zeros(config.vector_length, dtype=np.uint32)
    body = MaskedInput(config.digest, assignment.participant_id, vector).to_bytes()
    path = f"/agent/v1/uploads/rounds/{number}/masked-update"
    headers = {
        **agent.signer.signature_headers("PUT", url + path, body),
        "Content-Type": "application/octet-stream",
    }
    tampered = bytearray(body)
    tampered[-1] ^= 1
    refused = httpx.put(url + path, content=bytes(tampered), headers=headers, timeout=30)
    assert refused.status_code == 401, refused.text  # the body is not what was signed
    other = MaskedInput(config.digest, assignment.participant_id % 3 + 1, vector).to_bytes()
    impostor = httpx.put(
        url + path,
        content=other,
        headers={
            **agent.signer.signature_headers("PUT", url + path, other),
            "Content-Type": "application/octet-stream",
        },
        timeout=30,
    )
    assert impostor.status_code == 422, impostor.text  # another participant's upload
    assert "names participant" in impostor.json()["detail"]
    client = parts[0].client
    with pytest.raises(Rejected) as short:
        client.upload_masked_update(number, body[:100])
    assert short.value.status == 422
    done = drive(url, federation, parts, number, completed, "the round to complete")
    assert done["stage"] == "completed", done["failure_reason"]
    assert_aggregate(url, federation, federation.works)


def test_the_round_completes_after_the_api_process_restarts_mid_round(
    coordinator_server: CoordinatorServer,
    celery_worker: WorkerProcess,
    admin_token: str,
    tmp_path: Path,
) -> None:
    url = coordinator_server.url
    federation = make_federation(coordinator_server, admin_token, spec_document("restart"), 3)
    parts = participants(url, federation)
    number = start_round(url, federation)["number"]
    drive(url, federation, parts, number, lambda r: r["stage"] != "advertise_keys", "mid-round")
    parts[0].step()
    coordinator_server.process.send_signal(signal.SIGKILL)
    coordinator_server.process.wait(10)
    new_url, process = start_server(coordinator_server.env, tmp_path / "serve-2.log")
    try:
        for part, agent in zip(parts, federation.agents, strict=True):
            part.client = CoordinatorClient(new_url, agent.private_key, agent.profile.key_id)
        done = drive(new_url, federation, parts, number, completed, "the round to complete")
        assert done["stage"] == "completed", done["failure_reason"]
        assert_aggregate(new_url, federation, federation.works)
    finally:
        _stop(process)


def test_the_round_completes_when_a_worker_comes_back_after_one_was_killed_aggregating(
    coordinator_server: CoordinatorServer,
    celery_worker: WorkerProcess,
    beat: subprocess.Popen[bytes],
    admin_token: str,
    tmp_path: Path,
) -> None:
    url = coordinator_server.url
    # d ~ 33 000 coordinates: about 33 slices of 1024, so the kill lands mid-aggregation.
    document = spec_document("killed", input_dim=2000)
    federation = make_federation(coordinator_server, admin_token, document, 3)
    parts = participants(url, federation)
    number = start_round(url, federation)["number"]
    drive(url, federation, parts, number, lambda r: r["stage"] == "unmasking", "unmasking")
    database = Database(coordinator_server.env.settings().resolved_database_url)

    def pending_slices() -> int:
        with database.scope() as session:
            return int(
                session.scalar(
                    sa.select(sa.func.count())
                    .select_from(UnmaskSlice)
                    .where(UnmaskSlice.state == SliceState.PENDING)
                )
                or 0
            )

    def slices_exist() -> bool:
        with database.scope() as session:
            return bool(session.scalar(sa.select(sa.func.count()).select_from(UnmaskSlice)))

    for part in parts:
        part.step()
    wait_until(slices_exist, 30, "the unmasking slices to be created")
    kill_with_children(celery_worker.process)
    left = pending_slices()
    try:
        assert left > 0, "every slice was done before the worker died; nothing was tested"
        assert read_round(url, federation, number)["stage"] == "aggregating"
        log = tmp_path / "worker-2.log"
        replacement = start_process(coordinator_server.env, ["worker", "--concurrency", "1"], log)
        try:
            done = drive(url, federation, parts, number, completed, "the round to complete")
            assert done["stage"] == "completed", done["failure_reason"]
            assert_aggregate(url, federation, federation.works)
        finally:
            _stop(replacement, timeout_s=30)
    finally:
        database.dispose()


def test_plain_aggregation_is_refused_unless_the_coordinator_allows_it(
    coordinator_server: CoordinatorServer, admin_token: str
) -> None:
    url = coordinator_server.url
    document = {**spec_document("plain"), "secagg": {"mode": "plain"}}
    federation = make_federation(coordinator_server, admin_token, document, 3)
    refused = httpx.post(
        f"{url}/api/v1/federations/{federation.name}/rounds", headers=federation.admin, timeout=30
    )
    assert refused.status_code == 422
    assert "FMTL_ALLOW_PLAIN_AGGREGATION" in refused.json()["detail"]
    assert (
        httpx.get(
            f"{url}/api/v1/federations/{federation.name}/rounds",
            headers=federation.admin,
            timeout=10,
        ).json()
        == []
    )


def test_a_long_poll_on_one_api_process_is_answered_when_another_process_moves_the_round(
    coordinator_server: CoordinatorServer, admin_token: str, tmp_path: Path
) -> None:
    """Round events cross processes through Redis: an agent long-polls a second API
    replica, the round starts through the first, and the waiting request answers at once
    with the new assignment. The replica's own periodic re-read is pushed out of reach
    (FMTL_WORK_RECHECK_S), so only the published event can answer it before `wait_s`."""
    import threading

    from federation.round_api import Stage, WorkStatus, work_state

    federation = make_federation(coordinator_server, admin_token, spec_document("events"), 3)
    env = coordinator_server.env
    env.variables["FMTL_WORK_RECHECK_S"] = "600"
    replica_url, replica = start_server(env, tmp_path / "replica.log")
    try:
        agent = federation.agents[0]
        client = CoordinatorClient(replica_url, agent.private_key, agent.profile.key_id)
        idle = client.work()
        assert idle.assignment is None
        answers: list[WorkStatus] = []
        poll = threading.Thread(
            target=lambda: answers.append(client.work(wait_s=30.0, seen=work_state(None))),
            daemon=True,
        )
        poll.start()
        poll.join(3.0)  # the request is waiting in the replica
        assert poll.is_alive()
        start_round(coordinator_server.url, federation)  # committed by the first process
        poll.join(20.0)  # well before the poll's own 30 s
        assert not poll.is_alive()
        assert answers[0].assignment is not None
        assert answers[0].assignment.stage is Stage.ADVERTISE_KEYS
        client.close()
    finally:
        _stop(replica)
