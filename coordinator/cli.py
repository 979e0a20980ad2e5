"""`fmtl coordinator ...`: serve the API, run workers and the scheduler, migrate, bootstrap.

Settings come from `FMTL_*` variables (see `coordinator.settings`). Every failure is one
readable line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Final, NoReturn

import typer
from pydantic import ValidationError

from coordinator.audit.service import Actor, ActorKind
from coordinator.auth.models import Role
from coordinator.errors import ConfigurationError, CoordinatorError, DatabaseNotReady
from coordinator.runtime import Runtime
from coordinator.settings import Settings

if TYPE_CHECKING:
    from coordinator.worker import CoordinatorCelery

app = typer.Typer(
    name="coordinator",
    help="The coordinator: API server, Celery workers and scheduler, migrations, bootstrap.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_FAILURE: Final = 1
EXIT_AUDIT_BROKEN: Final = 3


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _readable_errors() -> Iterator[None]:
    """Turn every expected failure into one line; unexpected ones too, named by type."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except typer.Exit:
        raise
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "settings"
        _fail(f"invalid setting FMTL_{where.upper()}: {first.get('msg')}")
    except CoordinatorError as exc:
        _fail(exc.detail)
    except SQLAlchemyError as exc:
        origin = getattr(exc, "orig", None) or exc
        summary = (
            str(origin).strip().splitlines()[0] if str(origin).strip() else type(origin).__name__
        )
        _fail(f"database error: {summary}")
    except OSError as exc:
        _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": "))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        _fail(f"unexpected {type(exc).__name__}: {exc}")


def _settings(**overrides: object) -> Settings:
    values = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**values)  # type: ignore[arg-type]


def ensure_schema(runtime: Runtime, *, migrate: bool) -> None:
    """Bring the schema to head (when allowed) or refuse to run against an old one."""
    import migrations

    head = migrations.head_revision()
    if runtime.settings.is_sqlite:
        runtime.settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    current = migrations.current_revision(runtime.db.engine)
    if current == head:
        return
    if not migrate:
        raise DatabaseNotReady(
            f"the database schema is at {current or 'nothing (empty database)'} but this "
            f"version needs {head}: run `fmtl coordinator migrate` first"
        )
    migrations.upgrade(runtime.settings.resolved_database_url)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (FMTL_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (FMTL_PORT).")] = None,
) -> None:
    """Run the API server (and, with the embedded broker, the worker and tick in-process)."""
    with _readable_errors():
        import uvicorn

        from coordinator.app import create_app

        settings = _settings(host=host, port=port)
        runtime = Runtime.from_settings(settings)
        ensure_schema(runtime, migrate=settings.should_auto_migrate)
        runtime.db.dispose()
        if not settings.s3_blobs:
            settings.resolved_blob_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings.pepper  # noqa: B018 - create the pepper file now, not in a request
        runtime.signing_key  # noqa: B018 - load (or generate) the signing key now
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=10,
        )


def _production_celery(what: str) -> tuple[Settings, CoordinatorCelery]:
    from coordinator.worker import create_celery

    settings = _settings()
    if settings.embedded_worker:
        raise ConfigurationError(
            f"FMTL_BROKER_URL is memory:// (embedded): tasks already run inside `fmtl "
            f"coordinator serve`; a separate {what} needs a redis:// broker"
        )
    runtime = Runtime.from_settings(settings)
    ensure_schema(runtime, migrate=False)
    runtime.signing_key  # noqa: B018 - refuse to start without a usable signing key
    return settings, create_celery(settings, runtime)


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Worker processes.")] = 2,
) -> None:
    """Run a Celery worker process pool (production: redis:// broker)."""
    with _readable_errors():
        settings, celery = _production_celery("worker")
        celery.worker_main(
            [
                "worker",
                f"--concurrency={concurrency}",
                f"--loglevel={settings.log_level.upper()}",
                f"--queues={settings.queue}",
                # Unique per process, so a monitoring ping can address exactly this worker.
                f"--hostname=fmtl-worker-{os.getpid()}@%h",
                "--without-gossip",
                "--without-mingle",
            ]
        )


@app.command()
def beat() -> None:
    """Run the scheduler that sends the periodic `tick` (production: exactly one of these)."""
    with _readable_errors():
        settings, celery = _production_celery("beat")
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        celery.start(["beat", f"--loglevel={settings.log_level.upper()}"])


@app.command()
def migrate(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Upgrade the database schema (Alembic) to `revision`."""
    with _readable_errors():
        import migrations

        settings = _settings()
        if settings.is_sqlite:
            settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        migrations.upgrade(settings.resolved_database_url, revision)
        runtime = Runtime.from_settings(settings)
        current = migrations.current_revision(runtime.db.engine)
        runtime.db.dispose()
        typer.echo(f"database schema at revision {current}", err=True)


@app.command("create-token")
def create_token(
    role: Annotated[Role, typer.Option(help="Role of the new token.")],
    name: Annotated[str, typer.Option(help="Who or what will use it.")] = "bootstrap",
    expires_in_days: Annotated[int, typer.Option(min=1, max=366, help="Lifetime.")] = 90,
) -> None:
    """Issue an API token and print it once on stdout (e.g. the first admin's)."""
    with _readable_errors():
        from coordinator.auth import service
        from coordinator.auth.schemas import TOKEN_NAME_PATTERN
        from coordinator.db import utcnow

        if not re.match(TOKEN_NAME_PATTERN, name):
            raise ConfigurationError(f"invalid token name {name!r} (letters, digits, ' ._@-')")
        settings = _settings()
        runtime = Runtime.from_settings(settings)
        ensure_schema(runtime, migrate=settings.should_auto_migrate)
        with runtime.db.scope() as session:
            issued = service.create_token(
                session,
                settings.pepper,
                name=name,
                role=role,
                expires_at=utcnow() + timedelta(days=expires_in_days),
                actor=Actor(ActorKind.CLI, "create-token"),
            )
            token_id, expires_at = issued.record.id, issued.record.expires_at
        runtime.db.dispose()
        typer.echo(
            f"created {role.value} token {token_id} '{name}', expires {expires_at:%Y-%m-%d}; "
            "it is shown once:",
            err=True,
        )
        typer.echo(issued.secret)


@app.command("signing-key")
def signing_key(
    new: Annotated[
        bool,
        typer.Option(
            "--new",
            help="Print a fresh key (base64 seed) for FMTL_SIGNING_KEY instead, and nothing else.",
        ),
    ] = False,
) -> None:
    """Print the signing key's public half and id (what agents pin and auditors check)."""
    with _readable_errors():
        import base64

        from coordinator.signing import generate_signing_key, load_signing_key

        if new:
            fresh = generate_signing_key()
            typer.echo(base64.b64encode(fresh.seed()).decode("ascii"))
            return
        key = load_signing_key(_settings())
        typer.echo(f"key id:     {key.key_id}")
        typer.echo(f"public key: {base64.urlsafe_b64encode(key.public_key).decode().rstrip('=')}")


@app.command("audit-verify")
def audit_verify(
    expect_head: Annotated[
        str | None,
        typer.Option(help="An entry hash seen earlier: the log must still contain it."),
    ] = None,
) -> None:
    """Verify the audit log's hash chain and its signed checkpoints; names the first broken
    entry or checkpoint (exit status 3)."""
    with _readable_errors():
        from coordinator.audit import checkpoints

        if expect_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expect_head):
            _fail("--expect-head: a head hash is 64 lowercase hex digits")
        settings = _settings()
        runtime = Runtime.from_settings(settings)
        ensure_schema(runtime, migrate=False)
        with runtime.db.scope() as session:
            result = checkpoints.verify_anchored(
                session, runtime.signing_key.public_key, expect_head=expect_head
            )
        runtime.db.dispose()
        chain = result.chain
        if not chain.ok:
            _fail(
                f"audit log broken at entry {chain.first_broken_seq}: {chain.reason} "
                f"({chain.entries} entries before it verify)",
                EXIT_AUDIT_BROKEN,
            )
        if result.problem is not None:
            _fail(f"audit log: {result.problem}", EXIT_AUDIT_BROKEN)
        typer.echo(
            f"audit log intact: {chain.entries} entries, head {chain.head_hash}; "
            f"{result.checkpoints} signed checkpoints"
        )


def main() -> None:  # pragma: no cover - `python -m coordinator.cli`
    app(prog_name="fmtl coordinator", args=sys.argv[1:])
