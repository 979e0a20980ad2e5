"""Initial schema: every table of the coordinator (generated, then read).

Revision ID: 3f869a629cf9
Revises:
Create Date: 2026-11-24 10:57:34.477071
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3f869a629cf9"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column(
            "role",
            sa.Enum("admin", "operator", "auditor", name="role", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["api_tokens.id"],
            name=op.f("fk_api_tokens_created_by_id_api_tokens"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column(
            "action",
            sa.Enum(
                "token.created",
                "token.revoked",
                "federation.created",
                "institution.invited",
                "institution.enrolled",
                "institution.revoked",
                "round.created",
                "round.stage_changed",
                "model_version.stored",
                "task_metrics.recorded",
                "spend.recorded",
                name="auditaction",
                native_enum=False,
                length=64,
            ),
            nullable=False,
        ),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("entry_hash", name=op.f("uq_audit_log_entry_hash")),
        sa.UniqueConstraint("prev_hash", name=op.f("uq_audit_log_prev_hash")),
    )
    op.create_index(op.f("ix_audit_log_subject"), "audit_log", ["subject"], unique=False)
    op.create_table(
        "federations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column(
            "status",
            sa.Enum("active", "archived", name="federationstatus", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_round_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federations")),
        sa.UniqueConstraint("name", name=op.f("uq_federations_name")),
    )
    op.create_table(
        "institutions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "invited",
                "enrolled",
                "revoked",
                name="enrollmentstate",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("public_key", sa.LargeBinary(length=32), nullable=True),
        sa.Column("invited_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["federation_id"],
            ["federations.id"],
            name=op.f("fk_institutions_federation_id_federations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_institutions")),
        sa.UniqueConstraint(
            "federation_id", "name", name=op.f("uq_institutions_federation_id_name")
        ),
        sa.UniqueConstraint("public_key", name=op.f("uq_institutions_public_key")),
    )
    op.create_index(
        op.f("ix_institutions_federation_id"), "institutions", ["federation_id"], unique=False
    )
    op.create_table(
        "model_specs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sa.Integer(), nullable=False),
        sa.Column("encoder_kind", sa.String(length=32), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["federation_id"],
            ["federations.id"],
            name=op.f("fk_model_specs_federation_id_federations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_specs")),
        sa.UniqueConstraint("federation_id", name=op.f("uq_model_specs_federation_id")),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column(
            "stage",
            sa.Enum(
                "scheduled",
                "advertise_keys",
                "share_keys",
                "masked_input",
                "consistency_check",
                "unmasking",
                "aggregating",
                "completed",
                "failed",
                name="roundstage",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("stage_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("threshold", sa.Integer(), nullable=True),
        sa.Column("vector_length", sa.BigInteger(), nullable=True),
        sa.Column("layout_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("base_version", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["federation_id"],
            ["federations.id"],
            name=op.f("fk_rounds_federation_id_federations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rounds")),
        sa.UniqueConstraint("federation_id", "number", name=op.f("uq_rounds_federation_id_number")),
    )
    op.create_index(op.f("ix_rounds_federation_id"), "rounds", ["federation_id"], unique=False)
    op.create_index(op.f("ix_rounds_stage"), "rounds", ["stage"], unique=False)
    op.create_index(op.f("ix_rounds_stage_deadline"), "rounds", ["stage_deadline"], unique=False)
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "binary", "multiclass", "regression", name="taskkind", native_enum=False, length=32
            ),
            nullable=False,
        ),
        sa.Column("n_classes", sa.Integer(), nullable=True),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["federation_id"],
            ["federations.id"],
            name=op.f("fk_tasks_federation_id_federations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("federation_id", "name", name=op.f("uq_tasks_federation_id_name")),
    )
    op.create_index(op.f("ix_tasks_federation_id"), "tasks", ["federation_id"], unique=False)
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("institution_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["institution_id"],
            ["institutions.id"],
            name=op.f("fk_enrollment_tokens_institution_id_institutions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_enrollment_tokens_token_hash")),
    )
    op.create_index(
        op.f("ix_enrollment_tokens_institution_id"),
        "enrollment_tokens",
        ["institution_id"],
        unique=False,
    )
    op.create_table(
        "institution_tasks",
        sa.Column("institution_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["institution_id"],
            ["institutions.id"],
            name=op.f("fk_institution_tasks_institution_id_institutions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_institution_tasks_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("institution_id", "task_id", name=op.f("pk_institution_tasks")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=True),
        sa.Column("blob_key", sa.String(length=300), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("layout_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("version >= 0", name=op.f("ck_model_versions_version_not_negative")),
        sa.ForeignKeyConstraint(
            ["federation_id"],
            ["federations.id"],
            name=op.f("fk_model_versions_federation_id_federations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
            name=op.f("fk_model_versions_round_id_rounds"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint(
            "federation_id", "version", name=op.f("uq_model_versions_federation_id_version")
        ),
    )
    op.create_index(
        op.f("ix_model_versions_federation_id"), "model_versions", ["federation_id"], unique=False
    )
    op.create_table(
        "privacy_spend",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("institution_id", sa.Integer(), nullable=False),
        sa.Column(
            "accountant",
            sa.Enum("rdp", "prv", name="accountant", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("noise_multiplier", sa.Float(), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("reported_epsilon", sa.Float(), nullable=False),
        sa.Column("recomputed_epsilon", sa.Float(), nullable=False),
        sa.Column("budget_epsilon", sa.Float(), nullable=True),
        sa.Column("mismatch", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["institution_id"],
            ["institutions.id"],
            name=op.f("fk_privacy_spend_institution_id_institutions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
            name=op.f("fk_privacy_spend_round_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_spend")),
        sa.UniqueConstraint(
            "round_id", "institution_id", name=op.f("uq_privacy_spend_round_id_institution_id")
        ),
    )
    op.create_index(
        op.f("ix_privacy_spend_institution_id"), "privacy_spend", ["institution_id"], unique=False
    )
    op.create_table(
        "round_participants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("institution_id", sa.Integer(), nullable=False),
        sa.Column("secagg_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "selected",
                "dropped",
                "completed",
                name="participantstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "dropped_at_stage",
            sa.Enum(
                "scheduled",
                "advertise_keys",
                "share_keys",
                "masked_input",
                "consistency_check",
                "unmasking",
                "aggregating",
                "completed",
                "failed",
                name="roundstage",
                native_enum=False,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("secagg_id >= 1", name=op.f("ck_round_participants_secagg_id_positive")),
        sa.ForeignKeyConstraint(
            ["institution_id"],
            ["institutions.id"],
            name=op.f("fk_round_participants_institution_id_institutions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
            name=op.f("fk_round_participants_round_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round_participants")),
        sa.UniqueConstraint(
            "round_id", "institution_id", name=op.f("uq_round_participants_round_id_institution_id")
        ),
        sa.UniqueConstraint(
            "round_id", "secagg_id", name=op.f("uq_round_participants_round_id_secagg_id")
        ),
    )
    op.create_index(
        op.f("ix_round_participants_institution_id"),
        "round_participants",
        ["institution_id"],
        unique=False,
    )
    op.create_table(
        "round_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "config",
                "key_broadcast",
                "survivor_set",
                "unmask_plan",
                name="roundrecordkind",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
            name=op.f("fk_round_records_round_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round_records")),
        sa.UniqueConstraint("round_id", "kind", name=op.f("uq_round_records_round_id_kind")),
    )
    op.create_table(
        "round_stages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column(
            "stage",
            sa.Enum(
                "scheduled",
                "advertise_keys",
                "share_keys",
                "masked_input",
                "consistency_check",
                "unmasking",
                "aggregating",
                "completed",
                "failed",
                name="roundstage",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("responders", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
            name=op.f("fk_round_stages_round_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round_stages")),
        sa.UniqueConstraint("round_id", "stage", name=op.f("uq_round_stages_round_id_stage")),
    )
    op.create_table(
        "signature_nonces",
        sa.Column("institution_id", sa.Integer(), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["institution_id"],
            ["institutions.id"],
            name=op.f("fk_signature_nonces_institution_id_institutions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("institution_id", "nonce", name=op.f("pk_signature_nonces")),
    )
    op.create_index(
        op.f("ix_signature_nonces_expires_at"), "signature_nonces", ["expires_at"], unique=False
    )
    op.create_table(
        "task_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("institution_id", sa.Integer(), nullable=True),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["institution_id"],
            ["institutions.id"],
            name=op.f("fk_task_metrics_institution_id_institutions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
            name=op.f("fk_task_metrics_round_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_metrics_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_metrics")),
        sa.UniqueConstraint(
            "round_id",
            "task_id",
            "institution_id",
            "metric",
            name=op.f("uq_task_metrics_round_id_task_id_institution_id_metric"),
        ),
    )
    op.create_index(op.f("ix_task_metrics_round_id"), "task_metrics", ["round_id"], unique=False)
    op.create_table(
        "unmask_slices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("stop", sa.BigInteger(), nullable=False),
        sa.Column(
            "state",
            sa.Enum("pending", "done", name="slicestate", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("blob_key", sa.String(length=300), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "start >= 0 AND stop > start", name=op.f("ck_unmask_slices_slice_bounds")
        ),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
            name=op.f("fk_unmask_slices_round_id_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unmask_slices")),
        sa.UniqueConstraint("round_id", "index", name=op.f("uq_unmask_slices_round_id_index")),
    )
    op.create_table(
        "masked_updates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("blob_key", sa.String(length=300), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["round_participants.id"],
            name=op.f("fk_masked_updates_participant_id_round_participants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_masked_updates")),
        sa.UniqueConstraint("participant_id", name=op.f("uq_masked_updates_participant_id")),
    )
    op.create_table(
        "protocol_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "advertise_keys",
                "share_keys",
                "consistency_signature",
                "unmask_shares",
                "training_report",
                name="protocolmessagekind",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["round_participants.id"],
            name=op.f("fk_protocol_records_participant_id_round_participants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_protocol_records")),
        sa.UniqueConstraint(
            "participant_id", "kind", name=op.f("uq_protocol_records_participant_id_kind")
        ),
    )


def downgrade() -> None:
    op.drop_table("protocol_records")
    op.drop_table("masked_updates")
    op.drop_table("unmask_slices")
    op.drop_index(op.f("ix_task_metrics_round_id"), table_name="task_metrics")
    op.drop_table("task_metrics")
    op.drop_index(op.f("ix_signature_nonces_expires_at"), table_name="signature_nonces")
    op.drop_table("signature_nonces")
    op.drop_table("round_stages")
    op.drop_table("round_records")
    op.drop_index(op.f("ix_round_participants_institution_id"), table_name="round_participants")
    op.drop_table("round_participants")
    op.drop_index(op.f("ix_privacy_spend_institution_id"), table_name="privacy_spend")
    op.drop_table("privacy_spend")
    op.drop_index(op.f("ix_model_versions_federation_id"), table_name="model_versions")
    op.drop_table("model_versions")
    op.drop_table("institution_tasks")
    op.drop_index(op.f("ix_enrollment_tokens_institution_id"), table_name="enrollment_tokens")
    op.drop_table("enrollment_tokens")
    op.drop_index(op.f("ix_tasks_federation_id"), table_name="tasks")
    op.drop_table("tasks")
    op.drop_index(op.f("ix_rounds_stage_deadline"), table_name="rounds")
    op.drop_index(op.f("ix_rounds_stage"), table_name="rounds")
    op.drop_index(op.f("ix_rounds_federation_id"), table_name="rounds")
    op.drop_table("rounds")
    op.drop_table("model_specs")
    op.drop_index(op.f("ix_institutions_federation_id"), table_name="institutions")
    op.drop_table("institutions")
    op.drop_table("federations")
    op.drop_index(op.f("ix_audit_log_subject"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("api_tokens")
