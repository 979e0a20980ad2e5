"""Database plumbing: the declarative base, column types both backends share, engines, sessions.

Both backends run the same code. SQLite (embedded) gets foreign keys, WAL with
`synchronous=NORMAL` (see `SQLITE_SYNCHRONOUS`) and `BEGIN IMMEDIATE` transactions: the
API threads, the in-process worker and the tick loop then take the write lock up front
instead of failing on a read-to-write upgrade, which is also what serialises audit-log
appends there. PostgreSQL runs at READ COMMITTED; code that
needs more (the audit chain) takes an explicit advisory lock.

Services never commit implicitly: each public service function that changes state is one
transaction and commits it itself, audit entry included.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

#: Constraint names are derived, not left to the backend, so that Alembic's autogenerate
#: compare sees identical names on SQLite and PostgreSQL.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: How long a SQLite writer waits for the lock before failing (milliseconds).
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
#: SQLite's recommended setting in WAL mode: a commit is atomic and survives the process
#: being killed at any point (the WAL is in the OS's hands), and the database is never
#: corrupted; only an OS crash or a power cut may lose the last commits (the WAL is synced
#: at checkpoints, not at every commit). FULL synced each commit: ~8 ms per transaction on
#: a busy VM, two per signed request (its nonce, then its effect), which set the round time
#: of the embedded coordinator. Production runs PostgreSQL, whose durability is its own.
SQLITE_SYNCHRONOUS: Final = "NORMAL"


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both backends (SQLite stores it naive, in UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous: pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def enum_column(enum_type: type[enum.Enum], length: int = 32) -> sa.Enum:
    """A string column holding an enum's values (not names), without a native DB enum type.

    Portable, and adding a member later needs no `ALTER TYPE` migration.
    """
    return sa.Enum(
        enum_type,
        native_enum=False,
        length=length,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine configured for the backend in `url`."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(url, echo=echo, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see module doc).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """An engine and its session factory, created lazily (safe across `fork()`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._after_commit: list[Callable[[Session], None]] = []

    def after_commit(self, hook: Callable[[Session], None]) -> None:
        """Call `hook(session)` after every commit of a session made here (e.g. to publish
        what the transaction changed, once it is visible to everyone)."""
        self._after_commit.append(hook)

    def _sessionmaker(self) -> sessionmaker[Session]:
        sessions = sessionmaker(self.engine, expire_on_commit=False)
        hooks = self._after_commit

        @event.listens_for(sessions, "after_commit")
        def _committed(session: Session) -> None:
            for hook in hooks:
                hook(session)

        return sessions

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_db_engine(self.url)
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self) -> Session:
        if self._sessions is None:
            self._sessions = self._sessionmaker()
        return self._sessions()

    @contextmanager
    def scope(self) -> Iterator[Session]:
        """A session that rolls back whatever its user did not commit, then closes."""
        session = self.session()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        """Close pooled connections (at shutdown)."""
        if self._engine is not None:
            self._engine.dispose()
        self._engine = None
        self._sessions = None

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's pool without closing its connections."""
        if self._engine is not None:
            self._engine.dispose(close=False)
        self._engine = None
        self._sessions = None
