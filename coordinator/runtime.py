"""What every coordinator process holds: its settings, the database, the blob store and the
signing key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

from coordinator.auth.signatures import SignaturePolicy
from coordinator.blobs.local import LocalBlobStore
from coordinator.blobs.store import BlobStore
from coordinator.db import Database
from coordinator.rounds.events import RoundEvents, take_changed
from coordinator.settings import Settings
from coordinator.signing import SigningKey, load_signing_key


def blob_store(settings: Settings) -> BlobStore:
    """The blob store the settings name: an S3-compatible bucket, or the local folder."""
    if settings.s3_blobs:
        from coordinator.blobs.s3 import S3BlobStore, S3Location  # boto3: only when used

        secret = settings.s3_secret_access_key
        location = S3Location.parse(
            settings.blob_url or "",
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=None if secret is None else secret.get_secret_value(),
        )
        return S3BlobStore(location)
    return LocalBlobStore(settings.resolved_blob_dir)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    blobs: BlobStore
    events: RoundEvents

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        events = RoundEvents(
            None if settings.embedded_worker else settings.broker_url,
            channel=f"{settings.queue}:round-events",
        )
        db = Database(settings.resolved_database_url)
        db.after_commit(lambda session: events.publish(take_changed(session)))
        return cls(settings=settings, db=db, blobs=blob_store(settings), events=events)

    @cached_property
    def signing_key(self) -> SigningKey:
        """The coordinator's signing key (coordinator/signing.py), loaded once."""
        return load_signing_key(self.settings)

    @property
    def signature_policy(self) -> SignaturePolicy:
        return SignaturePolicy(
            max_age=timedelta(seconds=self.settings.signature_max_age_s),
            clock_skew=timedelta(seconds=self.settings.signature_clock_skew_s),
        )
