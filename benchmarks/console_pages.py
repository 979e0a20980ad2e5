"""How long the console's pages take with 1,000 rounds and 100 institutions.

Run from the repository root:

    python benchmarks/console_pages.py                 # 1,000 rounds x 100 institutions
    python benchmarks/console_pages.py --quick         # 100 rounds x 20 institutions
    FMTL_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        python benchmarks/console_pages.py             # on a fresh PostgreSQL database

The coordinator app (the real one, `create_app`) runs in this process behind Starlette's
test client, on a fresh SQLite file (or a fresh PostgreSQL database named by
`FMTL_BENCH_DATABASE_URL`). Two federations are seeded in bulk (`tests/console_seed.py`:
rounds with their stages and participants, task-wise results per institution and
federation-wide, the privacy ledger, a valid audit chain): a small one (10 rounds, 4
institutions), the baseline, and the large one. An admin signs in; every page of both is
requested `--repeat` times (the first request, which draws the charts, is reported apart:
charts are cached by content afterwards) and the median is printed. Times are wall-clock on
whatever else the machine is doing, so the headline is a ratio measured in the same run:
the large federation's slowest page against the same page of the small one.

The last line is the headline, exactly: `console_pages: rounds=<R> institutions=<N>
slowest=<page> first_s=<s> median_s=<s> vs_small=<ratio>` (one line).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run by path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient
from pydantic import SecretStr

import migrations
from coordinator.app import create_app
from coordinator.audit.service import Actor, ActorKind
from coordinator.auth import service as tokens
from coordinator.auth.models import Role
from coordinator.federations.service import create_federation
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from federation.spec import FederationSpec
from tests.console_seed import seed

ACTOR = Actor(ActorKind.CLI, "benchmark")
PAGES = (
    "/console/federations",
    "/console/federations/{f}",
    "/console/federations/{f}/institutions",
    "/console/federations/{f}/institutions?page=4",
    "/console/federations/{f}/rounds",
    "/console/federations/{f}/rounds?page=40",
    "/console/federations/{f}/rounds/{mid}",
    "/console/federations/{f}/rounds/{mid}/live",
    "/console/federations/{f}/results",
    "/console/federations/{f}/ledger",
    "/console/federations/{f}/ledger?page=10",
    "/console/audit",
    "/console/audit?action=spend.recorded&subject=spend:{f}/hospital_050/",
)


def _spec(name: str) -> FederationSpec:
    return FederationSpec.model_validate(
        {
            "name": name,
            "tasks": [
                {"name": "disease", "kind": "binary"},
                {"name": "severity", "kind": "multiclass", "n_classes": 5},
                {"name": "max_heart_rate", "kind": "regression"},
            ],
            "model": {"encoder": {"kind": "mlp", "input_dim": 13}},
        }
    )


def _database(folder: Path) -> str:
    url = os.environ.get("FMTL_BENCH_DATABASE_URL")
    if not url:
        return f"sqlite:///{folder / 'bench.sqlite3'}"
    import sqlalchemy as sa

    name = f"fmtl_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


def _drop(url: str) -> None:
    """Drop the PostgreSQL database `_database` made (a SQLite file goes with its folder)."""
    if not url.startswith("postgresql"):
        return
    import sqlalchemy as sa

    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(os.environ["FMTL_BENCH_DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _time(client: TestClient, path: str, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        answer = client.get(path)
        times.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise SystemExit(f"{path}: {answer.status_code} {answer.text[:200]}")
    return times[0], statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--institutions", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="100 rounds x 20 institutions, 2 repeats"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.institutions, args.repeat = 100, 20, 2
    folder = Path(tempfile.mkdtemp(prefix="fmtl-console-bench-"))
    url = _database(folder)
    settings = Settings(
        state_dir=folder, database_url=url, token_pepper=SecretStr(secrets.token_urlsafe(32))
    )
    migrations.upgrade(settings.resolved_database_url)
    runtime = Runtime.from_settings(settings)
    started = time.perf_counter()
    with runtime.db.scope() as session:
        small = create_federation(session, _spec("small"), actor=ACTOR)
        seed(session, small, institutions=4, rounds=10)
        large = create_federation(session, _spec("large"), actor=ACTOR)
        seed(session, large, institutions=args.institutions, rounds=args.rounds)
        token = tokens.create_token(
            session, settings.pepper, name="bench", role=Role.ADMIN, expires_at=None, actor=ACTOR
        ).secret
    print(
        f"seeded {args.rounds} rounds x {args.institutions} institutions "
        f"(+ 10 x 4 baseline) on {url.split(':', 1)[0]} in {time.perf_counter() - started:.1f} s"
    )
    client = TestClient(create_app(settings, start_embedded_worker=False))
    client.post("/console/sign-in", data={"token": token})
    results: dict[str, dict[str, tuple[float, float]]] = {"small": {}, "large": {}}
    print(f"{'page':<58} {'small first/median s':>22} {'large first/median s':>22}")
    for page in PAGES:
        for name in ("small", "large"):
            path = page.format(f=name, mid=5 if name == "small" else args.rounds // 2)
            if name == "small":
                path = re.sub(r"page=\d+", "page=1", path).replace("hospital_050", "hospital_001")
            results[name][page] = _time(client, path, args.repeat)
        (sf, sm), (lf, lm) = results["small"][page], results["large"][page]
        print(f"{page:<58} {sf:>10.3f} / {sm:<9.3f} {lf:>10.3f} / {lm:<9.3f}")
    slowest = max(PAGES, key=lambda page: results["large"][page][1])
    first, median = results["large"][slowest]
    ratio = median / results["small"][slowest][1]
    runtime.db.dispose()
    _drop(url)
    print(f"command: python benchmarks/console_pages.py --rounds {args.rounds} "
          f"--institutions {args.institutions} --repeat {args.repeat}")  # fmt: skip
    print(
        f"console_pages: rounds={args.rounds} institutions={args.institutions} "
        f"slowest={slowest} first_s={first:.3f} median_s={median:.3f} vs_small={ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
