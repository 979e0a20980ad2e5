"""Settings: embedded defaults, production from FMTL_* variables, secrets kept secret."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from coordinator.errors import ConfigurationError
from coordinator.settings import PEPPER_FILE_NAME, Settings


def test_defaults_are_the_embedded_deployment(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert (
        settings.resolved_database_url
        == f"sqlite:///{(tmp_path / 'coordinator.sqlite3').resolve()}"
    )
    assert settings.resolved_blob_dir == tmp_path / "blobs"
    assert settings.embedded_worker
    assert settings.should_auto_migrate


def test_production_comes_from_fmtl_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMTL_DATABASE_URL", "postgresql+psycopg://fmtl@db/fmtl")
    monkeypatch.setenv("FMTL_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("FMTL_QUEUE", "fmtl-prod")
    settings = Settings()
    assert settings.resolved_database_url == "postgresql+psycopg://fmtl@db/fmtl"
    assert not settings.embedded_worker
    assert not settings.should_auto_migrate  # production migrates explicitly
    assert settings.queue == "fmtl-prod"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FMTL_BROKER_URL", "amqp://guest@rabbit//"),
        ("FMTL_DATABASE_URL", "mysql://db/fmtl"),
        ("FMTL_PORT", "70000"),
        ("FMTL_QUEUE", "bad queue name"),
        ("FMTL_BLOB_URL", "gs://bucket/prefix"),
    ],
)
def test_unsupported_settings_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert variable.removeprefix("FMTL_").lower() in str(caught.value)


def test_generated_pepper_is_private_and_stable(tmp_path: Path) -> None:
    first = Settings(state_dir=tmp_path).pepper
    second = Settings(state_dir=tmp_path).pepper
    assert first == second
    assert len(first) >= 32
    mode = stat.S_IMODE((tmp_path / PEPPER_FILE_NAME).stat().st_mode)
    assert mode == 0o600


def test_configured_pepper_is_never_shown(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, token_pepper=SecretStr("a-very-secret-pepper-value"))
    assert "a-very-secret-pepper-value" not in repr(settings)
    assert "a-very-secret-pepper-value" not in str(settings.model_dump())
    assert settings.pepper == b"a-very-secret-pepper-value"
    assert not (tmp_path / PEPPER_FILE_NAME).exists()


def test_short_pepper_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="at least"):
        _ = Settings(state_dir=tmp_path, token_pepper=SecretStr("short")).pepper


def test_an_s3_blob_url_selects_the_object_store_and_a_bad_one_is_refused(
    tmp_path: Path,
) -> None:
    from coordinator.blobs.local import LocalBlobStore
    from coordinator.blobs.s3 import S3BlobStore
    from coordinator.runtime import blob_store

    settings = Settings(
        state_dir=tmp_path,
        blob_url="s3://fl-blobs/prod",
        s3_endpoint_url="http://127.0.0.1:1",
        s3_secret_access_key=SecretStr("s3cr3t-value"),
    )
    assert settings.s3_blobs
    store = blob_store(settings)
    assert isinstance(store, S3BlobStore)
    assert (store.location.bucket, store.location.prefix) == ("fl-blobs", "prod")
    assert "s3cr3t-value" not in repr(settings) + repr(store)
    local = blob_store(Settings(state_dir=tmp_path, blob_url=f"file://{tmp_path}/elsewhere"))
    assert isinstance(local, LocalBlobStore)
    assert local.root == tmp_path / "elsewhere"
    with pytest.raises(ConfigurationError, match="s3://bucket/prefix"):
        blob_store(Settings(state_dir=tmp_path, blob_url="s3:///no-bucket"))
