"""A typed client of the coordinator's people-facing REST API (`/api/v1/...`).

`fmtl admin` and `fmtl demo` drive the coordinator only through this client, with a bearer
token, exactly as any admin script would: nothing here imports the coordinator package, so
it works from a machine that installed only `fmtl[agent]`.

Responses are parsed into small pydantic models that ignore fields they do not know (a newer
coordinator may add some). Every failure is an `AdminError` whose message is one line: the
coordinator's problem `detail` (RFC 9457) with the status, or what could not be reached.
"""

from __future__ import annotations

import time
from datetime import datetime
from types import TracebackType
from typing import Any, Final, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from federation.roster import SignedRoster

#: Pause between attempts to start a round while the previous one is still finishing.
START_RETRY_S: Final = 0.5
#: Seconds to wait for one API call (the API answers from the database; rounds run elsewhere).
DEFAULT_TIMEOUT_S: Final = 30.0


class AdminError(Exception):
    """An admin API call failed; `str()` is one line that says what to fix."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class FederationInfo(_Out):
    id: int
    name: str
    status: str
    fingerprint: str
    tasks: list[str]
    created_at: datetime


class InstitutionInfo(_Out):
    id: int
    name: str
    federation: str
    state: str
    tasks: list[str]
    key_fingerprint: str | None = None
    public_key: str | None = None
    invited_at: datetime | None = None
    enrolled_at: datetime | None = None
    revoked_at: datetime | None = None


class Invitation(_Out):
    institution: InstitutionInfo
    enrollment_token: str
    expires_at: datetime


class StageInfo(_Out):
    stage: str
    opened_at: datetime
    deadline: datetime | None = None
    closed_at: datetime | None = None
    responders: int | None = None


class ParticipantInfo(_Out):
    institution_id: int
    secagg_id: int
    status: str
    dropped_at_stage: str | None = None


class RoundInfo(_Out):
    number: int
    stage: str
    stage_deadline: datetime | None = None
    threshold: int | None = None
    participants: int = 0
    base_version: int | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failure_reason: str | None = None
    vector_length: int | None = None
    stages: list[StageInfo] = []
    participant_list: list[ParticipantInfo] = []

    @property
    def finished(self) -> bool:
        return self.stage in ("completed", "failed")


class ResultInfo(_Out):
    """A task-wise figure: federation-wide (`institution` none: from the secure sum of the
    survivors' validation statistics, with `n_samples` from `institutions`) or one an
    institution sent in clear because it opted in."""

    round: int
    task: str
    institution: str | None
    metric: str
    value: float
    n_samples: int | None = None
    institutions: int | None = None

    @property
    def federation_wide(self) -> bool:
        return self.institution is None


class LedgerEntry(_Out):
    federation: str
    institution: str
    round: int
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    reported_epsilon: float
    recomputed_epsilon: float
    budget_epsilon: float | None = None
    mismatch: bool
    recorded_at: datetime
    delta_mismatch: bool = False
    spec_delta: float | None = None
    run_id: str | None = None


class UnreportedSpendInfo(_Out):
    federation: str
    institution: str
    round: int
    stage: str


class ModelVersionInfo(_Out):
    version: int
    round_id: int | None = None
    sha256: str
    size_bytes: int
    layout_fingerprint: str
    created_at: datetime


class CheckpointInfo(_Out):
    number: int
    audit_seq: int
    head_hash: str
    signed_at: datetime
    key_id: str


class AuditVerification(_Out):
    ok: bool
    entries: int
    head_hash: str
    first_broken_seq: int | None = None
    reason: str | None = None
    checkpoints: int = 0
    latest_checkpoint: CheckpointInfo | None = None
    key_id: str | None = None
    expected_head: str | None = None


class TokenIssued(_Out):
    id: int
    name: str
    role: str
    expires_at: datetime | None = None
    token: str


M = TypeVar("M")


def problem_line(response: httpx.Response) -> str:
    """One line from an error response: its problem `detail`, else its status text."""
    detail: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        raw = body.get("detail") or body.get("title")
        if isinstance(raw, str):
            detail = raw
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            loc = ".".join(str(part) for part in errors[0].get("loc", ()))
            detail = f"{detail or 'invalid input'}: {loc}: {errors[0].get('msg', '')}".strip()
    if not detail:
        detail = response.reason_phrase or "request failed"
    return " ".join(detail.split())


class AdminClient:
    """The coordinator's admin API over HTTP, with a bearer token.

    Use as a context manager (or call `close()`); one instance keeps one connection pool.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        http: httpx.Client | None = None,
    ) -> None:
        """`http`: an existing client to send through (e.g. a test client of the app)."""
        if not token:
            raise AdminError(
                "no admin token: set FMTL_ADMIN_TOKEN (see `fmtl coordinator create-token`)"
            )
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "User-Agent": "fmtl-admin"}
        self._owned = http is None
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self._http.close()

    # --- transport ------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, headers=self._headers, **kwargs)
        except httpx.TimeoutException:
            raise AdminError(f"the coordinator at {self.base_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise AdminError(
                f"cannot reach the coordinator at {self.base_url} ({type(exc).__name__}): "
                "check the URL (--url / FMTL_COORDINATOR_URL) and that it is running"
            ) from None
        if response.status_code == 401:
            raise AdminError(
                f"the coordinator refused the token ({problem_line(response)}): "
                "set FMTL_ADMIN_TOKEN to a valid admin token",
                401,
            )
        if response.status_code >= 400:
            raise AdminError(
                f"{method} {path}: {response.status_code} {problem_line(response)}",
                response.status_code,
            )
        return response

    def _parse(self, response: httpx.Response, shape: type[M]) -> M:
        try:
            return TypeAdapter(shape).validate_json(response.content)
        except ValidationError as exc:
            raise AdminError(
                f"unexpected answer from {response.request.url.path}: {exc.errors()[0]['msg']}"
            ) from None

    # --- API ------------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return self._parse(self._call("GET", "/api/v1/me"), dict[str, Any])

    def create_federation(self, spec: dict[str, Any]) -> FederationInfo:
        return self._parse(self._call("POST", "/api/v1/federations", json=spec), FederationInfo)

    def federations(self) -> list[FederationInfo]:
        return self._parse(self._call("GET", "/api/v1/federations"), list[FederationInfo])

    def invite(
        self, federation: str, name: str, tasks: list[str], ttl_hours: int | None = None
    ) -> Invitation:
        body: dict[str, Any] = {"name": name, "tasks": tasks}
        if ttl_hours is not None:
            body["ttl_hours"] = ttl_hours
        response = self._call("POST", f"/api/v1/federations/{federation}/institutions", json=body)
        return self._parse(response, Invitation)

    def institutions(self, federation: str) -> list[InstitutionInfo]:
        response = self._call("GET", f"/api/v1/federations/{federation}/institutions")
        return self._parse(response, list[InstitutionInfo])

    def roster(self, federation: str) -> SignedRoster | None:
        """The newest signed roster, or None when the federation has none yet."""
        try:
            response = self._call("GET", f"/api/v1/federations/{federation}/roster")
        except AdminError as exc:
            if exc.status == 404 and "no signed roster" in str(exc):
                return None
            raise
        return self._parse(response, SignedRoster)

    def publish_roster(self, federation: str, signed: SignedRoster) -> dict[str, Any]:
        response = self._call(
            "PUT",
            f"/api/v1/federations/{federation}/roster",
            json=signed.model_dump(mode="json"),
        )
        return self._parse(response, dict[str, Any])

    def start_round(self, federation: str) -> RoundInfo:
        response = self._call("POST", f"/api/v1/federations/{federation}/rounds", json={})
        return self._parse(response, RoundInfo)

    def start_next_round(
        self, federation: str, after: int | None = None, *, timeout_s: float = 30.0
    ) -> RoundInfo:
        """Start the round after round `after` (default: the latest), tolerating races.

        A 409 can mean the round opened anyway: the coordinator's periodic tick may select
        the new round's participants before the request does. Then that round is returned
        rather than another one started; a 409 because the previous round is still
        finishing is retried until `timeout_s`.
        """
        if after is None:
            after = max((r.number for r in self.rounds(federation)), default=0)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.start_round(federation)
            except AdminError as exc:
                if exc.status != 409:
                    raise
                opened = [r for r in self.rounds(federation) if r.number > after]
                if opened:
                    return opened[0]
                if time.monotonic() > deadline:
                    raise
            time.sleep(START_RETRY_S)

    def fail_round(self, federation: str, number: int, reason: str) -> RoundInfo:
        response = self._call(
            "POST",
            f"/api/v1/federations/{federation}/rounds/{number}/fail",
            json={"reason": reason},
        )
        return self._parse(response, RoundInfo)

    def rounds(self, federation: str) -> list[RoundInfo]:
        response = self._call("GET", f"/api/v1/federations/{federation}/rounds")
        return self._parse(response, list[RoundInfo])

    def round(self, federation: str, number: int) -> RoundInfo:
        response = self._call("GET", f"/api/v1/federations/{federation}/rounds/{number}")
        return self._parse(response, RoundInfo)

    def results(self, federation: str, round_number: int | None = None) -> list[ResultInfo]:
        params = {} if round_number is None else {"round": round_number}
        response = self._call("GET", f"/api/v1/federations/{federation}/results", params=params)
        return self._parse(response, list[ResultInfo])

    def ledger(
        self, federation: str | None = None, institution: str | None = None
    ) -> list[LedgerEntry]:
        params = {
            key: value
            for key, value in (("federation", federation), ("institution", institution))
            if value is not None
        }
        return self._parse(self._call("GET", "/api/v1/ledger", params=params), list[LedgerEntry])

    def unreported_spends(self, federation: str | None = None) -> list[UnreportedSpendInfo]:
        params = {} if federation is None else {"federation": federation}
        response = self._call("GET", "/api/v1/ledger/unreported", params=params)
        return self._parse(response, list[UnreportedSpendInfo])

    def models(self, federation: str) -> list[ModelVersionInfo]:
        response = self._call("GET", f"/api/v1/federations/{federation}/models")
        return self._parse(response, list[ModelVersionInfo])

    def model_vector(self, federation: str, version: int) -> bytes:
        return self._call(
            "GET", f"/api/v1/federations/{federation}/models/{version}/vector"
        ).content

    def audit_verify(self, expect_head: str | None = None) -> AuditVerification:
        params = {} if expect_head is None else {"expect_head": expect_head}
        response = self._call("GET", "/api/v1/audit/verify", params=params)
        return self._parse(response, AuditVerification)

    def create_token(self, name: str, role: str, expires_in_days: int = 90) -> TokenIssued:
        body = {"name": name, "role": role, "expires_in_days": expires_in_days}
        return self._parse(self._call("POST", "/api/v1/tokens", json=body), TokenIssued)
