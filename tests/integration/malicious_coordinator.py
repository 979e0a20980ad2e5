"""A malicious coordinator for the adversarial tests: a real one, and a liar in front of it.

`LyingCoordinator` serves one agent (the victim) on loopback and forwards every request,
signed by the agent as usual, to a real `fmtl coordinator serve`. The answers to the
victim's `GET /agent/v1/work` polls go through `lie`, which rewrites the round the way an
active, malicious coordinator would (the agent has nothing but the coordinator's word for
them: answers are not signed). The other agents talk to the real coordinator directly, so
a round goes on, or fails, for them as the real coordinator decides.

Every request the victim makes is recorded (`requests`), so a test can show what it sent
and, above all, what it did not.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.spec import FederationSpec
from privacy.secagg import IdentityPublicKey, RoundConfig, RoundMember
from tests.integration.conftest import AgentIdentity

#: A rewrite of one `RoundAssignment` (as its JSON document); None: the truth.
Lie = Callable[[dict[str, Any]], dict[str, Any]]


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def rewrite_config(
    assignment: dict[str, Any], change: Callable[[RoundConfig], RoundConfig]
) -> dict[str, Any]:
    """The assignment with its round config changed (and its summary fields to match)."""
    config = change(RoundConfig.from_bytes(_b64decode(assignment["config"])))
    return {
        **assignment,
        "config": _b64encode(config.to_bytes()),
        "participants": len(config.participants),
        "threshold": config.threshold,
    }


# --- the moves -------------------------------------------------------------------------------


def switch_masking_off(assignment: dict[str, Any]) -> dict[str, Any]:
    return {**assignment, "mode": "plain"}


def change_the_spec(assignment: dict[str, Any]) -> dict[str, Any]:
    return {**assignment, "spec_fingerprint": "f" * 64}


def shrink_the_round(assignment: dict[str, Any]) -> dict[str, Any]:
    """Only the victim and one peer: n = 2 (below the spec's minimum), t = 2 (so that one
    colluding peer and the coordinator would learn the victim's update)."""

    def two(config: RoundConfig) -> RoundConfig:
        me = config.participant(int(assignment["participant_id"]))
        other = next(p for p in config.participants if p.id != me.id)
        return replace(config, participants=(me, other), threshold=2)

    return rewrite_config(assignment, two)


def add_a_sybil(assignment: dict[str, Any]) -> dict[str, Any]:
    """One peer's identity key replaced by a key the coordinator holds."""
    sybil = IdentityPublicKey(Ed25519PrivateKey.generate().public_key().public_bytes_raw())

    def swap(config: RoundConfig) -> RoundConfig:
        me = int(assignment["participant_id"])
        victim_peer = next(p for p in config.participants if p.id != me)
        members = tuple(
            RoundMember(p.id, p.name, sybil) if p.id == victim_peer.id else p
            for p in config.participants
        )
        return replace(config, participants=members)

    return rewrite_config(assignment, swap)


def lower_the_threshold(assignment: dict[str, Any]) -> dict[str, Any]:
    """t = n/2: two disjoint halves could each unmask (a liar writes the bytes it likes,
    past `RoundConfig`'s own validation)."""

    def lower(config: RoundConfig) -> RoundConfig:
        weak = copy.copy(config)
        object.__setattr__(weak, "threshold", config.n // 2)
        return weak

    return rewrite_config(assignment, lower)


class HonestPeers:
    """The rest of the federation: honest, lightweight agents (`RoundParticipant` over signed
    HTTP with a `FixedDeltaWork`), each stepping in its own thread until stopped."""

    def __init__(self, url: str, identities: list[AgentIdentity], spec: FederationSpec) -> None:
        from agent.coordinator_client import CoordinatorClient
        from agent.round_participant import RoundParticipant
        from agent.round_policy import RoundPolicy
        from agent.round_state import InMemoryRoundStateStore
        from tests.round_support import FixedDeltaWork, small_deltas

        deltas = small_deltas(spec, len(identities))
        self.participants = [
            RoundParticipant(
                CoordinatorClient(url, who.private_key, who.profile.key_id, retries=8),
                who.private_key,
                InMemoryRoundStateStore(),
                FixedDeltaWork(spec, deltas[i], dict.fromkeys(who.profile.tasks_held, 10)),
                policy=RoundPolicy(who.profile, who.private_key.public_key().public_bytes_raw()),
            )
            for i, who in enumerate(identities)
        ]
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._loop, args=(p,), daemon=True) for p in self.participants
        ]

    def _loop(self, participant: Any) -> None:
        while not self.stop.is_set():
            try:
                participant.step()
            except Exception as exc:
                self.errors.append(exc)
            self.stop.wait(0.1)

    def __enter__(self) -> HonestPeers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


class LyingCoordinator:
    """A loopback proxy to `upstream` that lies about the victim's work (see module doc)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lie: Lie | None = None
        self.requests: list[tuple[str, str]] = []
        #: The bodies of the victim's training reports (what it sends in clear), by round.
        self.reports: dict[int, dict[str, Any]] = {}
        self.lies_told = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                with proxy._lock:
                    proxy.requests.append((self.command, path))
                    if self.command == "POST" and path.endswith("/report") and body:
                        proxy.reports[int(path.split("/")[-2])] = json.loads(body)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in {"host", "connection"}
                }
                answer = httpx.request(
                    self.command,
                    proxy.upstream + self.path,
                    content=body,
                    headers=headers,
                    timeout=60,
                )
                content = answer.content
                if self.path.startswith("/agent/v1/work") and answer.status_code == 200:
                    content = proxy._rewrite(content)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in {"content-length", "transfer-encoding", "connection"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _rewrite(self, content: bytes) -> bytes:
        lie = self.lie
        document = json.loads(content)
        assignment = document.get("assignment")
        if lie is None or assignment is None or assignment["stage"] in ("completed", "failed"):
            return content
        with self._lock:
            self.lies_told += 1
        return json.dumps({**document, "assignment": lie(assignment)}).encode()

    def sent_in_round(self, number: int) -> list[tuple[str, str]]:
        """What the victim sent (or asked) about round `number`."""
        prefix = f"/agent/v1/rounds/{number}/"
        with self._lock:
            return [(method, path) for method, path in self.requests if path.startswith(prefix)]

    def __enter__(self) -> LyingCoordinator:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
