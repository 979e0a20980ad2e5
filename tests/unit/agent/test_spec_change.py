"""`fmtl agent accept-spec`: one readable line per change, the security ones marked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.enrollment import Enrollment
from agent.spec_change import SpecChangeRefused, check_offered, pinned_with
from federation.spec import FederationSpec
from federation.wire import AgentProfile


def _profile(spec: FederationSpec, **changes: object) -> AgentProfile:
    fields: dict[str, object] = {
        "institution_id": 1,
        "key_id": "1",
        "institution": "cleveland",
        "federation": spec.name,
        "tasks_held": ("disease",),
        "enrolled_at": datetime.now(UTC),
        "spec": spec,
        "spec_fingerprint": spec.fingerprint(),
    }
    fields.update(changes)
    return AgentProfile.model_validate(fields)


def test_each_changed_setting_is_one_line(heart_spec: FederationSpec) -> None:
    enrollment = Enrollment(
        coordinator_url="https://fl.example.org",
        profile=_profile(heart_spec),
        stored_at=datetime.now(UTC),
        roster_key="ab" * 32,
    )
    weaker = heart_spec.model_copy(
        update={
            "secagg": heart_spec.secagg.model_copy(
                update={"mode": "plain", "threshold_fraction": 0.51}
            ),
            "schedule": heart_spec.schedule.model_copy(update={"min_participants": 2}),
        }
    )
    lines = check_offered(enrollment, _profile(weaker))
    assert lines == [
        "schedule.min_participants: 3 -> 2 (security)",
        'secagg.mode: "secure" -> "plain" (security)',
        "secagg.threshold_fraction: 0.6666666666666666 -> 0.51 (security)",
    ]
    accepted = pinned_with(enrollment, _profile(weaker))
    assert accepted.spec_fingerprint == weaker.fingerprint()
    assert accepted.roster_key == enrollment.roster_key
    assert check_offered(accepted, _profile(weaker)) == []


def test_a_spec_that_does_not_match_its_fingerprint_is_refused(
    heart_spec: FederationSpec,
) -> None:
    enrollment = Enrollment(
        coordinator_url="https://fl.example.org",
        profile=_profile(heart_spec),
        stored_at=datetime.now(UTC),
    )
    with pytest.raises(SpecChangeRefused, match="does not match its own fingerprint"):
        check_offered(enrollment, _profile(heart_spec, spec_fingerprint="0" * 64))
    with pytest.raises(SpecChangeRefused, match="answers for"):
        check_offered(enrollment, _profile(heart_spec, institution="va"))
