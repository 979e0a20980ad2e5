"""The agent's HTTP client of the coordinator: signed, typed, retried where that is safe.

Every request carries an RFC 9421 signature made with the institution's Ed25519 identity
(`agent.http_signing`); a retry is signed afresh (new nonce). Network failures and 502/503/504
are retried with exponential backoff and full jitter, and raise `CoordinatorUnreachable`
once the retries are spent; every other 4xx/5xx raises `Rejected` at once, carrying the
status and the coordinator's problem document. Retrying a message is safe: the coordinator
answers a repeated message with `Receipt.outcome == "repeat"` and changes nothing.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray
from pydantic import BaseModel

from agent.http_signing import RequestSigner, SignatureAuth
from federation.attestation import AuditCheckpoint, CheckpointPage
from federation.roster import SignedRoster
from federation.round_api import (
    BINARY_MEDIA_TYPE,
    LONG_POLL_HEADER,
    MAX_WORK_WAIT_S,
    MODEL_DTYPE_HEADER,
    MODEL_LAYOUT_HEADER,
    MODEL_SHA256_HEADER,
    MODEL_VERSION_HEADER,
    AdvertiseKeys,
    ConsistencyProofOut,
    Decline,
    PeersKeys,
    Receipt,
    SharesIn,
    SharesOut,
    SurvivorSetOut,
    SurvivorSignature,
    TrainingReport,
    UnmaskShares,
    WorkStatus,
)
from federation.wire import AGENT_API_PREFIX, UPLOAD_PREFIX, AgentProfile

#: Statuses that mean "the coordinator (or a proxy) is momentarily unavailable".
RETRIED_STATUSES: Final = frozenset({502, 503, 504})

M = TypeVar("M", bound=BaseModel)


class ClientError(Exception):
    """Base of the errors this client raises."""


class CoordinatorUnreachable(ClientError):
    """The coordinator could not be reached (or kept answering 502/503/504) after retries."""


class Rejected(ClientError):
    """The coordinator refused the request (4xx, or a 5xx that is not retried)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or "no detail"
        super().__init__(f"{status}: {detail}")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail", ""))


class BadResponse(ClientError):
    """The coordinator's answer does not match the protocol (e.g. a damaged model download)."""


@dataclass(frozen=True)
class GlobalModel:
    """A downloaded model vector (model layout) and what the coordinator said it is."""

    version: int
    vector: NDArray[np.float64] = field(repr=False)
    layout_fingerprint: str


class CoordinatorClient:
    """Signed calls of the agent API (`/agent/v1/...`), one method per protocol message."""

    def __init__(
        self,
        base_url: str,
        identity: Ed25519PrivateKey,
        key_id: str,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("retries and backoff must not be negative")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self.timeout_s = timeout_s
        #: Whether the coordinator holds work polls (it said so on the last `/work`).
        self.long_poll = False
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=SignatureAuth(RequestSigner(identity, key_id)),
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CoordinatorClient({self.base_url!r})"

    # -- transport -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: BaseModel | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> httpx.Response:
        headers = {}
        body = content
        if json_body is not None:
            body = json_body.model_dump_json().encode()
            headers["Content-Type"] = "application/json"
        elif content_type is not None:
            headers["Content-Type"] = content_type
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method, path, content=body, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRIED_STATUSES:
                    raise Rejected(response.status_code, _problem(response))
                failure = f"HTTP {response.status_code}"
            if attempt >= self.retries:
                raise CoordinatorUnreachable(
                    f"{method} {path} failed after {attempt + 1} attempts ({failure})"
                )
            # Exponential backoff with full jitter (a crowd of agents does not retry in step).
            ceiling = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            self._sleep(random.uniform(0, ceiling))  # noqa: S311 - jitter, not a secret
            attempt += 1

    def _get(self, path: str, model: type[M]) -> M:
        return _parse(self._request("GET", path), model)

    def _post(self, path: str, body: BaseModel, model: type[M]) -> M:
        return _parse(self._request("POST", path, json_body=body), model)

    @staticmethod
    def _round(number: int, what: str) -> str:
        return f"{AGENT_API_PREFIX}/rounds/{number}/{what}"

    # -- profile and work -------------------------------------------------------------------

    def profile(self) -> AgentProfile:
        return self._get(f"{AGENT_API_PREFIX}/me", AgentProfile)

    def audit_checkpoints(self, after: int) -> tuple[AuditCheckpoint, ...]:
        """The coordinator's signed audit checkpoints numbered above `after` (one page)."""
        response = self._request(
            "GET", f"{AGENT_API_PREFIX}/audit/checkpoints", params={"after": str(after)}
        )
        return _parse(response, CheckpointPage).checkpoints

    def roster(self) -> SignedRoster:
        """The federation's newest signed roster, as the coordinator relays it (the agent
        verifies it against the admin key it pinned: `agent.roster`)."""
        return self._get(f"{AGENT_API_PREFIX}/roster", SignedRoster)

    def work(self, *, wait_s: float = 0.0, seen: str | None = None) -> WorkStatus:
        """The agent's work; with `wait_s` and `seen` a long poll: the coordinator answers
        as soon as the work is no longer `seen` (`federation.round_api.work_state`), at the
        latest after `wait_s` (kept well inside this client's timeout)."""
        params: dict[str, str] | None = None
        wait = min(wait_s, MAX_WORK_WAIT_S, self.timeout_s / 2)
        if wait > 0 and seen is not None:
            params = {"wait_s": f"{wait:g}", "seen": seen}
        response = self._request("GET", f"{AGENT_API_PREFIX}/work", params=params)
        self.long_poll = LONG_POLL_HEADER in response.headers
        return _parse(response, WorkStatus)

    # -- protocol messages (privacy.secagg canonical bytes) --------------------------------

    def advertise_keys(self, number: int, advert: bytes) -> Receipt:
        return self._post(self._round(number, "keys"), AdvertiseKeys(advert=advert), Receipt)

    def peers_keys(self, number: int) -> bytes:
        return self._get(self._round(number, "keys"), PeersKeys).broadcast

    def send_shares(self, number: int, message: bytes) -> Receipt:
        return self._post(self._round(number, "shares"), SharesOut(message=message), Receipt)

    def fetch_shares(self, number: int) -> bytes:
        return self._get(self._round(number, "shares"), SharesIn).bundle

    def global_model(
        self, number: int, dtype: Literal["float32", "float64"] = "float32"
    ) -> GlobalModel:
        """The model the round trains from, checked against its SHA-256 header."""
        response = self._request("GET", self._round(number, "model"), params={"dtype": dtype})
        content = response.content
        expected = response.headers.get(MODEL_SHA256_HEADER, "")
        if hashlib.sha256(content).hexdigest() != expected:
            raise BadResponse("the model download does not match its SHA-256 header")
        if response.headers.get(MODEL_DTYPE_HEADER) != dtype:
            raise BadResponse(f"asked for {dtype}, got {response.headers.get(MODEL_DTYPE_HEADER)}")
        vector = np.frombuffer(content, dtype="<f8" if dtype == "float64" else "<f4")
        return GlobalModel(
            version=int(response.headers.get(MODEL_VERSION_HEADER, "-1")),
            vector=vector.astype(np.float64),
            layout_fingerprint=response.headers.get(MODEL_LAYOUT_HEADER, ""),
        )

    def upload_masked_update(self, number: int, masked_input: bytes) -> Receipt:
        """Round 2: the bytes of a `privacy.secagg.MaskedInput` (binary body)."""
        path = f"{UPLOAD_PREFIX}/rounds/{number}/masked-update"
        response = self._request("PUT", path, content=masked_input, content_type=BINARY_MEDIA_TYPE)
        return _parse(response, Receipt)

    def survivors(self, number: int) -> bytes:
        return self._get(self._round(number, "survivors"), SurvivorSetOut).survivors

    def sign_survivors(self, number: int, signature: bytes) -> Receipt:
        return self._post(
            self._round(number, "consistency"), SurvivorSignature(signature=signature), Receipt
        )

    def consistency_proof(self, number: int) -> bytes:
        return self._get(self._round(number, "consistency"), ConsistencyProofOut).proof

    def unmask(self, number: int, response: bytes) -> Receipt:
        return self._post(self._round(number, "unmask"), UnmaskShares(response=response), Receipt)

    def report(self, number: int, report: TrainingReport) -> Receipt:
        return self._post(self._round(number, "report"), report, Receipt)

    def decline(self, number: int, reason: str) -> Receipt:
        return self._post(self._round(number, "decline"), Decline(reason=reason), Receipt)


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        return {"status": response.status_code, "detail": response.text[:200]}
    return document if isinstance(document, dict) else {"detail": str(document)[:200]}


def _parse(response: httpx.Response, model: type[M]) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValueError as exc:
        raise BadResponse(f"unexpected answer to {response.request.url.path}: {exc}") from None
