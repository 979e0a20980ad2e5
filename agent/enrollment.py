"""Enrolling an institution's agent, and the enrollment it keeps in its state folder.

`enroll` makes the identity key, proves possession of it to the coordinator with the
one-time token (`federation.wire.enrollment_proof_message`), and stores what the agent
needs from then on: the key (mode 0600, encrypted when a passphrase is set) and the
`Enrollment` (institution, key id, the federation spec and its fingerprint, the
coordinator's URL) as `profile.json` (0600) in the 0700 state folder.

Every way it can fail is an `EnrollmentError` with one line saying what to fix: a URL
that is unreachable or is not an fmtl coordinator, a token that is unknown, used or
expired (the coordinator's own words), an existing identity.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Final

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.config import AgentConfig, check_coordinator_url
from agent.errors import AgentError
from agent.http_signing import enrollment_proof
from agent.identity import (
    IdentityExists,
    ensure_private_dir,
    generate_identity,
    identity_pem,
    public_key_bytes,
    write_private_file,
)
from agent.logging import event, get_logger
from federation.roster import key_fingerprint, normalise_fingerprint
from federation.wire import AGENT_API_PREFIX, AgentProfile, EnrollmentRequest

#: RFC 9457 problem types of the coordinator start with this (coordinator/api/problems.py).
FMTL_PROBLEM_PREFIX: Final = "urn:fmtl:problem:"
ENROLL_PATH: Final = f"{AGENT_API_PREFIX}/enroll"

_log = get_logger("enrollment")


class EnrollmentError(AgentError):
    """Enrollment did not happen (nothing was stored)."""


class NotEnrolled(AgentError):
    """The agent has no enrollment in its state folder yet."""


class Enrollment(BaseModel):
    """What the agent keeps about its enrollment (`<state dir>/profile.json`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coordinator_url: str
    profile: AgentProfile
    stored_at: datetime
    #: Fingerprint of the federation admin's roster key, pinned at enrollment
    #: (`--roster-key`): only rosters signed by it are taken (agent.roster).
    roster_key: str | None = None
    #: Fingerprint of this agent's own identity key (what the admin checks it signs).
    identity_fingerprint: str | None = None

    @property
    def spec_fingerprint(self) -> str:
        return self.profile.spec_fingerprint


def load_enrollment(config: AgentConfig) -> Enrollment:
    """The stored enrollment; `NotEnrolled` (with the command to run) when there is none."""
    path = config.profile_file
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotEnrolled(
            f"{path}: not enrolled yet; run: fmtl agent enroll --coordinator URL --token TOKEN "
            f"--config {config.source or 'agent.toml'}"
        ) from None
    try:
        return Enrollment.model_validate_json(text)
    except ValidationError:
        raise AgentError(
            f"{path}: the enrollment profile is damaged; enroll again with --force"
        ) from None


def coordinator_url(config: AgentConfig, enrollment: Enrollment) -> str:
    """Where to reach the coordinator: agent.toml's [coordinator] url, else the enrolled one."""
    return config.coordinator.url or enrollment.coordinator_url


def http_verify(config: AgentConfig) -> str | bool:
    """httpx's `verify`: the configured CA bundle, else the system's trust store."""
    return str(config.coordinator.ca_bundle) if config.coordinator.ca_bundle else True


def _problem_detail(response: httpx.Response) -> str | None:
    """The coordinator's `detail` when the answer is one of its problem documents."""
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or not str(body.get("type", "")).startswith(FMTL_PROBLEM_PREFIX):
        return None
    return str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")


def _post_enrollment(
    url: str, request: EnrollmentRequest, *, timeout_s: float, verify: str | bool
) -> AgentProfile:
    target = url + ENROLL_PATH
    try:
        response = httpx.post(
            target,
            content=request.model_dump_json(),
            headers={"Content-Type": "application/json"},
            timeout=timeout_s,
            verify=verify,
            follow_redirects=False,
        )
    except httpx.ConnectError as exc:
        reason = str(exc).strip() or type(exc).__name__
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            raise EnrollmentError(
                f"cannot verify the TLS certificate of {url}; set [coordinator] ca_bundle in "
                "agent.toml to the coordinator's CA"
            ) from None
        raise EnrollmentError(
            f"cannot reach the coordinator at {url} ({reason}); check --coordinator"
        ) from None
    except httpx.TimeoutException:
        raise EnrollmentError(
            f"the coordinator at {url} did not answer within {timeout_s:g} s; check --coordinator"
        ) from None
    except httpx.HTTPError as exc:
        raise EnrollmentError(
            f"cannot talk to the coordinator at {url} ({type(exc).__name__}: {exc}); "
            "check --coordinator"
        ) from None
    detail = _problem_detail(response)
    if response.status_code == 201:
        try:
            return AgentProfile.model_validate_json(response.content)
        except ValidationError:
            raise EnrollmentError(
                f"{url} accepted the enrollment but its answer is not an fmtl agent profile; "
                "is it an fmtl coordinator of the same version?"
            ) from None
    if detail is not None:
        hint = (
            "; ask the federation's admin for a new enrollment token"
            if response.status_code in (401, 409)
            else ""
        )
        raise EnrollmentError(f"the coordinator refused the enrollment: {detail}{hint}")
    raise EnrollmentError(
        f"{url} does not look like an fmtl coordinator (HTTP {response.status_code} on "
        f"POST {ENROLL_PATH}); check --coordinator"
    )


def enroll(
    config: AgentConfig,
    *,
    coordinator: str,
    token: str,
    roster_key: str,
    force: bool = False,
    identity: Ed25519PrivateKey | None = None,
) -> tuple[Enrollment, Ed25519PrivateKey]:
    """Enroll with `token` at `coordinator`; stores the key and the profile on success only.

    `roster_key` is the fingerprint of the federation admin's roster key, from the admin
    (out of band): it is pinned. A fresh identity key is made for every enrollment; with
    `identity` given (a key made beforehand, e.g. mounted from a Kubernetes secret at the
    configured key file), that key is enrolled and no key file is written (the coordinator
    refuses a key already enrolled anywhere).
    """
    try:
        url = check_coordinator_url(coordinator)
    except ValueError as exc:
        raise EnrollmentError(f"--coordinator: {exc}") from None
    try:
        pinned = normalise_fingerprint(roster_key)
    except ValueError as exc:
        raise EnrollmentError(f"--roster-key: {exc}") from None
    token = token.strip()
    key_file = config.key_file
    existing_key = identity is not None
    if not force:
        for existing in (config.profile_file, *(() if existing_key else (key_file,))):
            if existing.exists():
                raise IdentityExists(
                    f"{existing}: this agent is already enrolled; enrolling again replaces its "
                    "identity (the old one stops working): pass --force"
                )
    ensure_private_dir(config.state_dir)
    private_key = identity or generate_identity()
    try:
        request = EnrollmentRequest(
            token=token,
            public_key=public_key_bytes(private_key),
            proof=enrollment_proof(private_key, token),
        )
    except ValidationError:
        raise EnrollmentError(
            "--token: not an enrollment token (it is the `enrollment_token` an admin got when "
            "inviting your institution)"
        ) from None
    if existing_key:
        profile = _post_enrollment(
            url, request, timeout_s=config.coordinator.timeout_s, verify=http_verify(config)
        )
    else:
        # The key is on disk (0600) before it is registered, so a crash right after the
        # coordinator accepted it cannot lose it; it moves into place only on success.
        ensure_private_dir(key_file.parent)
        staged = key_file.with_name(f".{key_file.name}.enrolling")
        write_private_file(staged, identity_pem(private_key, config.key_passphrase))
        try:
            profile = _post_enrollment(
                url, request, timeout_s=config.coordinator.timeout_s, verify=http_verify(config)
            )
            staged.replace(key_file)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            raise
    enrollment = Enrollment(
        coordinator_url=url,
        profile=profile,
        stored_at=datetime.now(UTC),
        roster_key=pinned,
        identity_fingerprint=key_fingerprint(public_key_bytes(private_key)),
    )
    write_private_file(
        config.profile_file,
        json.dumps(enrollment.model_dump(mode="json"), indent=2).encode("utf-8"),
    )
    event(
        _log,
        "enrolled",
        institution=profile.institution,
        federation=profile.federation,
        key_id=profile.key_id,
        coordinator=url,
        spec_fingerprint=profile.spec_fingerprint[:16],
        roster_key=pinned[:16],
        encrypted_key=config.key_passphrase is not None,
    )
    return enrollment, private_key


__all__ = [
    "ENROLL_PATH",
    "Enrollment",
    "EnrollmentError",
    "NotEnrolled",
    "coordinator_url",
    "enroll",
    "http_verify",
    "load_enrollment",
]
