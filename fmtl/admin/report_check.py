"""Check an auditor's privacy report offline: signature, key, page, and the arithmetic.

`fmtl admin verify-report FILE` reads the HTML file the console exported (or its JSON),
and checks, without any network:

1. the Ed25519 signature of the coordinator's key over the signed JSON (domain
   `fmtl/privacy-report/v1`), and that the key is the one the auditor pinned (`--key-id`);
2. for the HTML file, that the page's body is the one that was signed (its SHA-256);
3. that the report is consistent: the mismatch count matches the flagged lines, and, for
   a report from the first round on, every institution's recomputed ε is what the named
   accountant gives for its reported (σ, q, steps) history.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from federation.attestation import key_id as key_id_of
from federation.attestation import signed_message
from federation.privacy_report import (
    BODY_END,
    BODY_START,
    EMBEDDED_JSON_ID,
    PRIVACY_REPORT_DOMAIN,
    ReportEnvelope,
)

#: Recomputed ε must agree with the report to this relative tolerance (the accountant is
#: deterministic for RDP; PRV's own error bound is 0.01 absolute).
RECOMPUTE_RELATIVE: float = 1e-6
RECOMPUTE_ABSOLUTE: dict[str, float] = {"rdp": 1e-9, "prv": 2e-2}


class ReportUnreadable(ValueError):
    """The file is not a privacy report (bad input, exit status 2)."""


@dataclass
class Verdict:
    ok: bool
    key_id: str
    federation: str
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_report(path: Path) -> tuple[ReportEnvelope, str | None]:
    """The envelope, and the HTML text when the file is the HTML report."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportUnreadable(f"cannot read {path}: {exc}") from None
    html: str | None = None
    raw = text
    if text.lstrip().startswith("<"):
        html = text
        found = re.search(
            rf'<script type="application/json" id="{EMBEDDED_JSON_ID}">(.*?)</script>',
            text,
            flags=re.S,
        )
        if found is None:
            raise ReportUnreadable(f"{path} holds no signed privacy report")
        raw = found.group(1)
    try:
        return ReportEnvelope.model_validate(json.loads(raw)), html
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ReportUnreadable(
            f"{path} is not a privacy report: {str(exc).splitlines()[0]}"
        ) from None


def verify_report(
    path: Path, *, expected_key_id: str | None, recompute: bool = True, every_line: bool = False
) -> Verdict:
    envelope, html = read_report(path)
    document = envelope.signed.document
    verdict = Verdict(ok=True, key_id=envelope.key_id, federation=document.federation)

    def fail(problem: str) -> None:
        verdict.ok = False
        verdict.problems.append(problem)

    public = _unb64(envelope.public_key)
    if key_id_of(public) != envelope.key_id:
        fail("the report's key id is not the SHA-256 of its public key")
    if expected_key_id is not None and expected_key_id.lower() != envelope.key_id:
        fail(f"signed by key {envelope.key_id}, not by the pinned key {expected_key_id}")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            _unb64(envelope.signature),
            signed_message(PRIVACY_REPORT_DOMAIN, envelope.signed.payload()),
        )
        verdict.checks.append(f"signature valid (key {envelope.key_id[:16]}…)")
    except (InvalidSignature, ValueError):
        fail("the signature does not verify: the report was changed after it was signed")
    if html is not None:
        start, end = html.find(BODY_START), html.find(BODY_END)
        if start < 0 or end < start:
            fail("the HTML body markers are missing")
        else:
            body = html[start : end + len(BODY_END)]
            if hashlib.sha256(body.encode("utf-8")).hexdigest() != envelope.signed.html_body_sha256:
                fail("the page's body is not the one that was signed")
            else:
                verdict.checks.append("the page's body is the signed one")
    flagged = sum(line.mismatch for item in document.institutions for line in item.history)
    if flagged != document.mismatches:
        fail(f"{document.mismatches} mismatches stated, {flagged} lines flagged")
    if recompute and document.since is None:
        _recompute(document.accountant, envelope, fail, verdict, every_line=every_line)
    elif recompute:
        verdict.checks.append("ε not recomputed: the report starts after the first round")
    if expected_key_id is None:
        verdict.checks.append(
            "key not pinned: pass --key-id (from `fmtl coordinator signing-key`) to check "
            "that the coordinator's key made it"
        )
    return verdict


def _recompute(
    kind: str,
    envelope: ReportEnvelope,
    fail: Callable[[str], None],
    verdict: Verdict,
    *,
    every_line: bool,
) -> None:
    """Replay each institution's reported history; check its last line (or every line)."""
    from coordinator.ledger.accountant import MechanismStep, recompute_epsilon
    from federation.spec import Accountant

    accountant = Accountant(kind)
    checked = 0
    for item in envelope.signed.document.institutions:
        history: list[MechanismStep] = []
        for index, line in enumerate(item.history):
            history.append(MechanismStep(line.noise_multiplier, line.sample_rate, line.steps))
            if not every_line and index != len(item.history) - 1:
                continue
            expected = recompute_epsilon(accountant, history, line.delta)
            if not math.isclose(
                expected,
                line.recomputed_epsilon,
                rel_tol=RECOMPUTE_RELATIVE,
                abs_tol=RECOMPUTE_ABSOLUTE.get(kind, 1e-9),
            ):
                fail(
                    f"{item.name} round {line.round}: the report says ε = "
                    f"{line.recomputed_epsilon:.6g}, the {kind} accountant gives {expected:.6g}"
                )
                return
            checked += 1
    what = "lines" if every_line else "institutions' totals"
    verdict.checks.append(f"ε recomputed with the {kind} accountant: {checked} {what} agree")
