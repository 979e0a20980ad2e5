"""Create, list and look up federations."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.errors import AlreadyExists, NotFound
from coordinator.federations.models import Federation, ModelSpecRecord, Task
from federation.spec import FederationSpec


def create_federation(session: Session, spec: FederationSpec, *, actor: audit.Actor) -> Federation:
    """Store a new federation with its tasks and model spec (names are unique)."""
    if find_federation(session, spec.name) is not None:
        raise AlreadyExists(f"a federation named '{spec.name}' already exists")
    model_json = spec.model.model_dump_json()
    federation = Federation(
        name=spec.name,
        spec_json=spec.model_dump_json(),
        fingerprint=spec.fingerprint(),
        tasks=[
            Task(
                name=task.name,
                position=position,
                kind=task.kind,
                n_classes=task.n_classes,
                weight=task.weight,
            )
            for position, task in enumerate(spec.tasks)
        ],
        model_spec=ModelSpecRecord(
            encoder_kind=spec.model.encoder.kind,
            spec_json=model_json,
            fingerprint=hashlib.sha256(model_json.encode()).hexdigest(),
        ),
    )
    session.add(federation)
    try:
        session.flush()
    except sa.exc.IntegrityError:  # a concurrent request created the same name first
        session.rollback()
        raise AlreadyExists(f"a federation named '{spec.name}' already exists") from None
    audit.record(
        session,
        actor,
        AuditAction.FEDERATION_CREATED,
        f"federation:{spec.name}",
        {"fingerprint": federation.fingerprint, "tasks": list(spec.task_names)},
    )
    session.commit()
    return federation


def find_federation(session: Session, name: str) -> Federation | None:
    query = (
        sa.select(Federation)
        .where(Federation.name == name)
        .options(selectinload(Federation.tasks), selectinload(Federation.model_spec))
    )
    return session.scalars(query).first()


def get_federation(session: Session, name: str) -> Federation:
    federation = find_federation(session, name)
    if federation is None:
        raise NotFound(f"no federation named '{name}'")
    return federation


def list_federations(session: Session) -> list[Federation]:
    query = sa.select(Federation).order_by(Federation.name).options(selectinload(Federation.tasks))
    return list(session.scalars(query))
