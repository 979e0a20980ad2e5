"""Every table of the coordinator, gathered so that `Base.metadata` is complete.

Alembic's environment and the tests import this module; nothing else needs to.
"""

from __future__ import annotations

from coordinator.audit.models import AuditEntry
from coordinator.auth.models import ApiToken, SignatureNonce
from coordinator.db import Base
from coordinator.federations.models import Federation, ModelSpecRecord, Task
from coordinator.institutions.models import EnrollmentToken, Institution, institution_tasks
from coordinator.ledger.models import PrivacySpend
from coordinator.model_versions.models import ModelVersion
from coordinator.results.models import TaskMetric
from coordinator.rosters.models import RosterVersion
from coordinator.rounds.models import (
    MaskedUpdate,
    Participant,
    ProtocolRecord,
    Round,
    RoundRecord,
    RoundStageRecord,
    UnmaskSlice,
)

metadata = Base.metadata

__all__ = [
    "ApiToken",
    "AuditEntry",
    "EnrollmentToken",
    "Federation",
    "Institution",
    "MaskedUpdate",
    "ModelSpecRecord",
    "ModelVersion",
    "Participant",
    "PrivacySpend",
    "ProtocolRecord",
    "RosterVersion",
    "Round",
    "RoundRecord",
    "RoundStageRecord",
    "SignatureNonce",
    "Task",
    "TaskMetric",
    "UnmaskSlice",
    "institution_tasks",
    "metadata",
]
