"""The coordinator's one settings object: every knob, its default, and where it comes from.

Defaults are the embedded deployment (nothing to install): a SQLite file and a blob folder
under `state_dir`, and the `memory://` broker, which means Celery tasks run on a worker
thread inside `fmtl coordinator serve`. Production overrides come from `FMTL_*` environment
variables (or a `.env`-style file named by the caller), e.g.

    FMTL_DATABASE_URL=postgresql+psycopg://fmtl@db/fmtl
    FMTL_BROKER_URL=redis://redis:6379/0
    FMTL_TOKEN_PEPPER=<48 random bytes, base64>

Nothing else in the coordinator reads `os.environ`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Final, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coordinator.errors import ConfigurationError
from federation.wire import SIGNATURE_CLOCK_SKEW_S, SIGNATURE_MAX_AGE_S

ENV_PREFIX: Final = "FMTL_"
#: Broker URL meaning "no broker: tasks run on an in-process worker thread".
EMBEDDED_BROKER: Final = "memory://"
#: Bytes of a generated token pepper (HMAC-SHA256 key: 32 bytes is its block-size-safe choice).
PEPPER_BYTES: Final = 32
PEPPER_FILE_NAME: Final = "token_pepper"
MIN_PEPPER_LENGTH: Final = 16


class Settings(BaseSettings):
    """Coordinator settings (prefix `FMTL_`, e.g. `FMTL_DATABASE_URL`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    state_dir: Path = Field(
        default=Path("var"),
        description="Folder for embedded state: the SQLite file, blobs, the generated "
        "token pepper and signing key, the beat schedule.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset: SQLite file `<state_dir>/coordinator.sqlite3`.",
    )
    blob_dir: Path | None = Field(
        default=None, description="Blob folder; unset: `<state_dir>/blobs`."
    )
    blob_url: str | None = Field(
        default=None,
        description="Where blobs (models, masked updates, slices) live: `s3://bucket/prefix` "
        "for an S3-compatible object store (no shared volume needed); unset or `file://`: "
        "the blob folder.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible store (MinIO, SeaweedFS, Ceph ...); unset: AWS.",
    )
    s3_region: str | None = Field(default=None, description="S3 region; unset: us-east-1.")
    s3_access_key_id: str | None = Field(
        default=None, description="S3 access key id; unset: the AWS SDK's own credential chain."
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret key; unset: the AWS SDK's own credential chain."
    )
    broker_url: str = Field(
        default=EMBEDDED_BROKER,
        description="Celery broker; `memory://` runs tasks on a thread inside `serve`, "
        "`redis://...` needs separate `worker` and `beat` processes.",
    )
    queue: str = Field(
        default="fmtl",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Celery queue name the API sends to and the workers consume.",
    )
    auto_migrate: bool | None = Field(
        default=None,
        description="Upgrade the schema on start; unset: only for SQLite (embedded).",
    )
    host: str = Field(default="127.0.0.1", description="Address `serve` listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `serve` listens on.")
    token_pepper: SecretStr | None = Field(
        default=None,
        description="HMAC key for stored token hashes; unset: generated once into "
        "`<state_dir>/token_pepper` (mode 0600). Set it explicitly in production.",
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="The coordinator's Ed25519 signing key (audit checkpoints, reports): "
        "PKCS#8 PEM, or base64 of a 32-byte seed. Unset: FMTL_SIGNING_KEY_FILE, else "
        "generated once into `<state_dir>/signing_key.pem` (mode 0600). Set it explicitly "
        "in production, the same in every process (coordinator/signing.py).",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="A PKCS#8 PEM file holding the signing key (e.g. a mounted secret); "
        "used when FMTL_SIGNING_KEY is unset. It must exist.",
    )
    audit_checkpoint_interval_s: float = Field(
        default=60.0,
        ge=0.0,
        le=86_400.0,
        description="The tick signs a new audit checkpoint when the log grew and the last "
        "checkpoint is at least this old (0: at every tick that finds new entries).",
    )
    max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="Largest request body accepted by JSON endpoints (streamed uploads "
        "are limited by their own size checks).",
    )
    enrollment_token_ttl_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long an enrollment invitation is valid."
    )
    signature_max_age_s: int = Field(
        default=SIGNATURE_MAX_AGE_S, ge=10, le=3600, description="Oldest accepted signature."
    )
    signature_clock_skew_s: int = Field(
        default=SIGNATURE_CLOCK_SKEW_S, ge=0, le=600, description="Tolerated clock skew."
    )
    tick_interval_s: float = Field(
        default=5.0, gt=0.0, le=3600.0, description="Period of the deadline `tick` task."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    allow_plain_aggregation: bool = Field(
        default=False,
        description="Allow federations with `secagg.mode = plain` (unmasked sums) to run "
        "rounds: for benchmarks and tests only, never in production.",
    )
    agent_seen_window_s: float = Field(
        default=3600.0,
        gt=0.0,
        description="A round selects agents seen (polling, or enrolled) within this window.",
    )
    unmask_slice_coordinates: int = Field(
        default=1 << 18,
        ge=1024,
        le=1 << 30,
        description="Coordinates per unmasking task (each worker task unmasks one slice).",
    )
    slice_lease_s: float = Field(
        default=120.0,
        gt=0.0,
        le=86_400.0,
        description="How long a worker holds an unmasking slice before another may take it "
        "over (a killed worker's slices are redone after this).",
    )
    work_poll_interval_s: float = Field(
        default=5.0, ge=0.0, le=3600.0, description="How often agents are told to poll."
    )
    work_recheck_s: float = Field(
        default=5.0,
        gt=0.0,
        le=3600.0,
        description="A long-polling work request re-reads its agent's work at least this "
        "often, round events or not (what a lost event costs at most).",
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("sqlite", "postgresql")):
            raise ValueError("database_url must be a sqlite:// or postgresql:// URL")
        return url

    @field_validator("blob_url")
    @classmethod
    def _known_blob_store(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("s3://", "file://")):
            raise ValueError("blob_url must be an s3://bucket/prefix or a file:// URL")
        return url

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, url: str) -> str:
        if url != EMBEDDED_BROKER and not url.startswith(("redis://", "rediss://")):
            raise ValueError("broker_url must be memory:// (embedded) or a redis:// URL")
        return url

    @property
    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'coordinator.sqlite3').resolve()}"

    @property
    def resolved_blob_dir(self) -> Path:
        if self.blob_url is not None and self.blob_url.startswith("file://"):
            return Path(self.blob_url.removeprefix("file://"))
        return self.blob_dir if self.blob_dir is not None else self.state_dir / "blobs"

    @property
    def s3_blobs(self) -> bool:
        """Whether blobs live in an S3-compatible object store (else in the blob folder)."""
        return self.blob_url is not None and self.blob_url.startswith("s3://")

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def embedded_worker(self) -> bool:
        """Whether tasks run on a thread inside the API process."""
        return self.broker_url == EMBEDDED_BROKER

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    @cached_property
    def pepper(self) -> bytes:
        """The token-hash pepper: from settings, else from (or generated into) the state dir."""
        if self.token_pepper is not None:
            value = self.token_pepper.get_secret_value().encode()
            if len(value) < MIN_PEPPER_LENGTH:
                raise ConfigurationError(
                    f"FMTL_TOKEN_PEPPER must be at least {MIN_PEPPER_LENGTH} characters"
                )
            return value
        return read_or_create_private_file(
            self.state_dir / PEPPER_FILE_NAME, lambda: secrets.token_urlsafe(PEPPER_BYTES).encode()
        )


def read_or_create_private_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """Read a secret file, or create it (0600) with `make()` atomically, so that racing
    processes agree on one value (the first to link its draft wins)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = make()
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(value)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(draft, path)  # no-clobber: the first process to link wins
        except FileExistsError:
            return path.read_bytes()
        return value
    finally:
        draft.unlink(missing_ok=True)
