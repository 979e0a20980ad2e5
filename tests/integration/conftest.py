"""Real services for integration tests: PostgreSQL, Redis, and the coordinator on them.

URLs come from FMTL_TEST_DATABASE_URL (a database we may create other databases from)
and FMTL_TEST_REDIS_URL. When a service is unreachable the tests that need it are
skipped with the reason, except under CI=true, where that is a failure: CI must run them.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.http_signing import RequestSigner, SignatureAuth
    from coordinator.settings import Settings
    from federation.wire import AgentProfile
    from tests.seaweedfs import SeaweedS3

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is unreachable ({error})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}: integration tests must run in CI", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session", autouse=True)
def _ctrl_c_reaches_the_children() -> Iterator[None]:
    """Children start with Ctrl-C (SIGINT) as a terminal gives it to a foreground command.

    A test run started in the background by a non-interactive shell (`cmd &`) inherits
    SIGINT ignored, and so would every child it starts: `fmtl demo` would then never see
    the Ctrl-C the tests send it. A Python handler here becomes the default disposition
    in each child at exec.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    import sqlalchemy as sa

    url = os.environ.get("FMTL_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    try:
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        _unavailable(f"PostgreSQL at {url}", exc)
    return url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A brand-new, empty PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"fmtl_test_{secrets.token_hex(6)}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def worker_redis_url(url: str) -> str:
    """Under pytest-xdist, each worker its own Redis database number (gw0 keeps the URL's,
    gw1 the next, ...): queues and channels are namespaced per test anyway; this keeps one
    worker's broker traffic and key scans out of the others' way."""
    from redis.connection import parse_url

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0
    if index == 0:
        return url
    base = int(parse_url(url).get("db", 0))
    head, _, tail = url.partition("?")
    scheme_host = head.rsplit("/", 1)[0] if head.count("/") > 2 else head.rstrip("/")
    return f"{scheme_host}/{(base + index) % 16}" + (f"?{tail}" if tail else "")


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = worker_redis_url(os.environ.get("FMTL_TEST_REDIS_URL", DEFAULT_REDIS_URL))
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:
        _unavailable(f"Redis at {url}", exc)
    return url


@pytest.fixture
def namespace() -> str:
    """A unique name for queues and keys, so concurrent test runs never share state."""
    return f"fmtl-test-{secrets.token_hex(4)}"


# --- The coordinator on the real stack --------------------------------------------------------
#
# A migrated PostgreSQL database, a `fmtl coordinator serve` process on a free loopback port
# using Redis as its broker, a `fmtl coordinator worker` process, an admin token made with
# the bootstrap CLI, and an enrolled agent that signs its requests. Every process is started
# with a unique queue name and a fresh state folder, and stopped (by its own pid) afterwards.

#: Failure deadlines only (a passing start takes seconds): generous, because the suite runs
#: on several workers on a shared 2-core machine, where one start can take a minute.
SERVER_START_DEADLINE_S = 180.0
WORKER_START_DEADLINE_S = 180.0


def wait_until(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `deadline_s` seconds."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {deadline_s:.0f} s waiting for {what}", pytrace=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture
def migrated_postgres_url(postgres_url: str) -> str:
    """A fresh PostgreSQL database upgraded to the latest migration."""
    import migrations

    migrations.upgrade(postgres_url)
    return postgres_url


@dataclass(frozen=True)
class CoordinatorEnv:
    """The FMTL_* settings shared by every coordinator process of one test."""

    variables: dict[str, str]
    state_dir: Path

    def process_env(self, **extra: str) -> dict[str, str]:
        base = {key: value for key, value in os.environ.items() if not key.startswith("FMTL_")}
        return {**base, **self.variables, **extra}

    def settings(self) -> Settings:
        """The same settings, for tests that look into the database directly."""
        from coordinator.settings import Settings

        values = {key.removeprefix("FMTL_").lower(): value for key, value in self.variables.items()}
        return Settings(**values)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fmtl", "coordinator", *args],
            env=self.process_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def coordinator_env(
    migrated_postgres_url: str, redis_url: str, namespace: str, tmp_path: Path
) -> Iterator[CoordinatorEnv]:
    """Settings for this test's processes; afterwards, this test's broker keys are removed
    (only those naming its unique queue: other runs may share the Redis)."""
    import redis

    state_dir = tmp_path / "coordinator-state"
    yield CoordinatorEnv(
        variables={
            "FMTL_DATABASE_URL": migrated_postgres_url,
            "FMTL_BROKER_URL": redis_url,
            "FMTL_QUEUE": namespace,
            "FMTL_STATE_DIR": str(state_dir),
            "FMTL_TOKEN_PEPPER": secrets.token_urlsafe(32),
            # As in production: one key for every process, from the environment.
            "FMTL_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "FMTL_LOG_LEVEL": "warning",
        },
        state_dir=state_dir,
    )
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"*{namespace}*"):
            client.delete(key)
    finally:
        client.close()


@dataclass(frozen=True)
class CoordinatorServer:
    url: str
    env: CoordinatorEnv
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def coordinator_server(
    coordinator_env: CoordinatorEnv, tmp_path: Path
) -> Iterator[CoordinatorServer]:
    """`fmtl coordinator serve` on a free loopback port, ready (/readyz) before the test."""
    import httpx

    port = free_port()
    log = tmp_path / "coordinator-serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "fmtl", "coordinator", "serve"],
            env=coordinator_env.process_env(FMTL_HOST="127.0.0.1", FMTL_PORT=str(port)),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the coordinator exited ({process.returncode}):\n{_log_tail(log)}")
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, SERVER_START_DEADLINE_S, "the coordinator's /readyz")
        yield CoordinatorServer(url=url, env=coordinator_env, process=process, log=log)
    finally:
        _stop(process)


@dataclass(frozen=True)
class WorkerProcess:
    process: subprocess.Popen[bytes]
    hostname: str
    log: Path


@pytest.fixture
def celery_worker(coordinator_env: CoordinatorEnv, tmp_path: Path) -> Iterator[WorkerProcess]:
    """`fmtl coordinator worker` consuming this test's queue, answering pings before the test."""
    from coordinator.worker import create_celery

    log = tmp_path / "coordinator-worker.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "fmtl", "coordinator", "worker", "--concurrency", "1"],
            env=coordinator_env.process_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    hostname = f"fmtl-worker-{process.pid}@{socket.gethostname()}"
    control = create_celery(coordinator_env.settings())

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the worker exited ({process.returncode}):\n{_log_tail(log)}")
        return bool(control.control.ping(destination=[hostname], timeout=0.5))

    try:
        wait_until(answers, WORKER_START_DEADLINE_S, f"worker {hostname} to answer a ping")
        yield WorkerProcess(process=process, hostname=hostname, log=log)
    finally:
        _stop(process, timeout_s=30.0)
        control.close()


@pytest.fixture
def admin_token(coordinator_server: CoordinatorServer) -> str:
    """An admin token made the way operators bootstrap one: `fmtl coordinator create-token`."""
    done = coordinator_server.env.cli("create-token", "--role", "admin", "--name", "integration")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass(frozen=True)
class AgentIdentity:
    """An enrolled agent: its identity key, its profile and an httpx auth that signs."""

    private_key: Ed25519PrivateKey
    profile: AgentProfile
    signer: RequestSigner

    @property
    def auth(self) -> SignatureAuth:
        from agent.http_signing import SignatureAuth

        return SignatureAuth(self.signer)


INTEGRATION_SPEC = {
    "name": "heart",
    "tasks": [
        {"name": "disease", "kind": "binary"},
        {"name": "severity", "kind": "multiclass", "n_classes": 5},
    ],
    "model": {"encoder": {"kind": "mlp", "input_dim": 13}},
}


def enroll_over_http(
    base_url: str, admin_token: str, federation: str, name: str, tasks: list[str]
) -> AgentIdentity:
    """Invite `name` as an admin, then enroll it as its agent would, over HTTP."""
    import base64

    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.http_signing import RequestSigner, enrollment_proof
    from federation.wire import AgentProfile

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    admin = {"Authorization": f"Bearer {admin_token}"}
    invited = httpx.post(
        f"{base_url}/api/v1/federations/{federation}/institutions",
        json={"name": name, "tasks": tasks},
        headers=admin,
        timeout=10,
    )
    assert invited.status_code == 201, invited.text
    token = invited.json()["enrollment_token"]
    key = Ed25519PrivateKey.generate()
    enrolled = httpx.post(
        f"{base_url}/agent/v1/enroll",
        json={
            "token": token,
            "public_key": b64(key.public_key().public_bytes_raw()),
            "proof": b64(enrollment_proof(key, token)),
        },
        timeout=10,
    )
    assert enrolled.status_code == 201, enrolled.text
    profile = AgentProfile.model_validate_json(enrolled.content)
    return AgentIdentity(
        private_key=key, profile=profile, signer=RequestSigner(key, profile.key_id)
    )


@pytest.fixture
def federation_name(coordinator_server: CoordinatorServer, admin_token: str) -> str:
    import httpx

    created = httpx.post(
        f"{coordinator_server.url}/api/v1/federations",
        json=INTEGRATION_SPEC,
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["name"])


@pytest.fixture
def agent_identity(
    coordinator_server: CoordinatorServer, admin_token: str, federation_name: str
) -> AgentIdentity:
    return enroll_over_http(
        coordinator_server.url, admin_token, federation_name, "cleveland", ["disease", "severity"]
    )


# --- An S3-compatible object store (SeaweedFS) ------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One real SeaweedFS (S3 gateway) for the session, on free loopback ports."""
    from tests.seaweedfs import SeaweedS3, WeedNotInstalled

    try:
        server = SeaweedS3.start(tmp_path_factory.mktemp("seaweedfs"))
    except (WeedNotInstalled, RuntimeError) as exc:
        _unavailable("SeaweedFS (the S3-compatible store)", exc)
        raise  # unreachable: _unavailable fails or skips
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_blob_env(s3_server: SeaweedS3, namespace: str) -> dict[str, str]:
    """FMTL_* settings that put this test's blobs under their own prefix of the bucket."""
    return {**s3_server.env, "FMTL_BLOB_URL": f"s3://{s3_server.bucket}/{namespace}"}
