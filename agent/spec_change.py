"""`fmtl agent accept-spec`: what changed in the federation's spec, and pinning the new one.

The agent trains, encodes and checks every round against the spec it pinned at enrollment
(agent.round_policy); a round of any other spec is refused. When the coordinator's spec
differs, the institution reviews the change here, one readable line per changed setting
(security settings marked), and only its explicit consent pins the new spec.
"""

from __future__ import annotations

import json
from typing import Any, Final

from agent.enrollment import Enrollment
from agent.errors import AgentError
from federation.spec import FederationSpec
from federation.wire import AgentProfile

#: Settings whose change weakens (or strengthens) what a round reveals: marked in the list.
SECURITY_SETTINGS: Final = (
    "secagg.",
    "schedule.min_participants",
    "schedule.max_participants",
    "dp.",
    "aggregation.counter_weighting",
)


class SpecChangeRefused(AgentError):
    """The coordinator's spec cannot replace the pinned one (another federation, damaged)."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}{key}."))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for index, inner in enumerate(value):
            name = inner.get("name", index) if isinstance(inner, dict) else index
            out.update(_flatten(inner, f"{prefix}{name}."))
        return out
    return {prefix.rstrip("."): value}


def spec_changes(pinned: FederationSpec, offered: FederationSpec) -> list[str]:
    """One line per setting that differs: `secagg.mode: "secure" -> "plain" (security)`."""
    before = _flatten(pinned.model_dump(mode="json"))
    after = _flatten(offered.model_dump(mode="json"))
    lines = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, "(unset)"), after.get(key, "(unset)")
        if old == new:
            continue
        mark = " (security)" if key.startswith(SECURITY_SETTINGS) else ""
        lines.append(f"{key}: {json.dumps(old)} -> {json.dumps(new)}{mark}")
    return lines


def check_offered(enrollment: Enrollment, offered: AgentProfile) -> list[str]:
    """The changes from the pinned spec to the coordinator's; `SpecChangeRefused` when the
    offer is not a spec this enrollment could pin."""
    pinned = enrollment.profile
    if offered.federation != pinned.federation or offered.institution != pinned.institution:
        raise SpecChangeRefused(
            f"the coordinator answers for '{offered.institution}' in '{offered.federation}', "
            f"this agent is '{pinned.institution}' in '{pinned.federation}'"
        )
    if offered.spec.fingerprint() != offered.spec_fingerprint:
        raise SpecChangeRefused("the coordinator's spec does not match its own fingerprint")
    return spec_changes(pinned.spec, offered.spec)


def pinned_with(enrollment: Enrollment, offered: AgentProfile) -> Enrollment:
    """The enrollment with the offered spec pinned (everything else kept)."""
    profile = enrollment.profile.model_copy(
        update={"spec": offered.spec, "spec_fingerprint": offered.spec_fingerprint}
    )
    return enrollment.model_copy(update={"profile": profile})


__all__ = ["SpecChangeRefused", "check_offered", "pinned_with", "spec_changes"]
