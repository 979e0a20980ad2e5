"""`fmtl admin ...`: drive a coordinator's REST API as an admin, from a terminal.

The token comes from `FMTL_ADMIN_TOKEN` (never a command-line argument: those show up in
process listings and shell history); the coordinator's URL from `--url` or
`FMTL_COORDINATOR_URL`. Results are Rich tables, or JSON with `--json`. Every failure is one
line on stderr and exit status 1.

    export FMTL_ADMIN_TOKEN=$(fmtl coordinator create-token --role admin)
    fmtl admin federation create --spec examples/heart_disease/federation.json
    fmtl admin invite heart_disease cleveland --task disease --task severity
    fmtl admin round start heart_disease --wait
    fmtl admin results heart_disease
"""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console

from fmtl.admin import tables
from fmtl.admin.client import AdminClient, AdminError

DEFAULT_URL: Final = "http://127.0.0.1:8000"
TOKEN_ENV: Final = "FMTL_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret
URL_ENV: Final = "FMTL_COORDINATOR_URL"
#: How often `round start --wait` asks for the round's stage.
POLL_INTERVAL_S: Final = 0.5

app = typer.Typer(
    name="admin",
    help="Drive the coordinator's API as an admin (token from FMTL_ADMIN_TOKEN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
federation_app = typer.Typer(help="Create and list federations.", no_args_is_help=True)
round_app = typer.Typer(help="Start and inspect rounds.", no_args_is_help=True)
app.add_typer(federation_app, name="federation")
app.add_typer(round_app, name="round")

console = Console()


@dataclass(frozen=True)
class _Target:
    url: str
    token: str


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.callback()
def _connect(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar=URL_ENV, help="The coordinator's base URL.")
    ] = DEFAULT_URL,
) -> None:
    # Only from the environment: arguments show up in process listings and shell history.
    ctx.obj = _Target(url=url, token=os.environ.get(TOKEN_ENV, ""))


@contextmanager
def _client(ctx: typer.Context) -> Iterator[AdminClient]:
    target: _Target = ctx.obj
    try:
        with AdminClient(target.url, target.token) as client:
            yield client
    except AdminError as exc:
        _fail(str(exc))


def _emit_json(value: BaseModel | Sequence[BaseModel]) -> None:
    if isinstance(value, BaseModel):
        typer.echo(value.model_dump_json(indent=2))
    else:
        typer.echo(json.dumps([item.model_dump(mode="json") for item in value], indent=2))


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def load_spec(path: Path) -> dict[str, Any]:
    """A federation spec from a JSON or TOML file (by suffix), as a plain mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AdminError(f"cannot read the spec {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AdminError(
            f"{path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise AdminError(f"{path} must hold one object (the federation spec)")
    return data


@federation_app.command("create")
def federation_create(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Option(help="Federation spec (JSON or TOML).")],
    name: Annotated[str | None, typer.Option(help="Override the spec's name.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a federation from its spec file."""
    with _client(ctx) as client:
        body = load_spec(spec)
        if name is not None:
            body["name"] = name
        created = client.create_federation(body)
        if as_json:
            _emit_json(created)
            return
        console.print(tables.federations_table([created]))


@federation_app.command("list")
def federation_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List federations."""
    with _client(ctx) as client:
        items = client.federations()
        _emit_json(items) if as_json else console.print(tables.federations_table(items))


@app.command()
def invite(
    ctx: typer.Context,
    federation: Annotated[str, typer.Argument(help="Federation name.")],
    name: Annotated[str, typer.Argument(help="The institution's name.")],
    task: Annotated[list[str], typer.Option("--task", help="A task it holds labels for (repeat).")],
    ttl_hours: Annotated[int | None, typer.Option(help="Token validity (hours).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Invite an institution; prints its one-time enrollment token on stdout."""
    with _client(ctx) as client:
        invitation = client.invite(federation, name, task, ttl_hours)
        if as_json:
            _emit_json(invitation)
            return
        typer.echo(
            f"invited '{name}' to '{federation}' "
            f"(tasks: {', '.join(invitation.institution.tasks)}); "
            f"its enrollment token expires {invitation.expires_at:%Y-%m-%d %H:%M} UTC and is "
            "shown once:",
            err=True,
        )
        typer.echo(invitation.enrollment_token)


@app.command()
def institutions(
    ctx: typer.Context,
    federation: Annotated[str, typer.Argument(help="Federation name.")],
    as_json: JsonOption = False,
) -> None:
    """List a federation's institutions and their enrollment state."""
    with _client(ctx) as client:
        items = client.institutions(federation)
        _emit_json(items) if as_json else console.print(tables.institutions_table(items))


@round_app.command("start")
def round_start(
    ctx: typer.Context,
    federation: Annotated[str, typer.Argument(help="Federation name.")],
    wait: Annotated[bool, typer.Option(help="Wait until the round completes or fails.")] = False,
    timeout_s: Annotated[float, typer.Option(help="Longest wait with --wait.")] = 3600.0,
) -> None:
    """Start the federation's next round."""
    with _client(ctx) as client:
        started = client.start_next_round(federation, timeout_s=0.0)
        typer.echo(f"round {started.number} of '{federation}': {started.stage}", err=True)
        if not wait:
            return
        deadline = time.monotonic() + timeout_s
        current = started
        while not current.finished:
            if time.monotonic() > deadline:
                _fail(f"round {started.number} still at {current.stage} after {timeout_s:.0f} s")
            time.sleep(POLL_INTERVAL_S)
            current = client.round(federation, started.number)
        console.print(tables.round_table(current, _names(client, federation)))
        if current.stage == "failed":
            _fail(f"round {current.number} failed: {current.failure_reason}")


def _names(client: AdminClient, federation: str) -> dict[int, str]:
    return {item.id: item.name for item in client.institutions(federation)}


@round_app.command("show")
def round_show(
    ctx: typer.Context,
    federation: Annotated[str, typer.Argument(help="Federation name.")],
    number: Annotated[int, typer.Argument(help="Round number.")],
    as_json: JsonOption = False,
) -> None:
    """One round: its stages with durations, and its participants."""
    with _client(ctx) as client:
        item = client.round(federation, number)
        if as_json:
            _emit_json(item)
            return
        console.print(tables.round_table(item, _names(client, federation)))


@round_app.command("fail")
def round_fail(
    ctx: typer.Context,
    federation: Annotated[str, typer.Argument(help="Federation name.")],
    number: Annotated[int, typer.Argument(help="Round number.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the round and the audit log).")],
) -> None:
    """End an open round as failed (e.g. one stuck in a stage), so the next one can open."""
    with _client(ctx) as client:
        item = client.fail_round(federation, number, reason)
    typer.echo(f"round {item.number} of '{federation}': {item.stage} ({item.failure_reason})")


@app.command()
def rounds(
    ctx: typer.Context,
    federation: Annotated[str, typer.Argument(help="Federation name.")],
    as_json: JsonOption = False,
) -> None:
    """A federation's rounds, oldest first."""
    with _client(ctx) as client:
        items = client.rounds(federation)
        _emit_json(items) if as_json else console.print(tables.rounds_table(items))


@app.command()
def results(
    ctx: typer.Context,
    federation: Annotated[str, typer.Argument(help="Federation name.")],
    round_number: Annotated[
        int | None, typer.Option("--round", help="Only this round (default: the latest).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Task-wise results of the global model: federation-wide (from the secure sums), and
    per institution where the institution opted in."""
    with _client(ctx) as client:
        items = client.results(federation, round_number)
        if as_json:
            _emit_json(items)
            return
        if not items:
            _fail(f"no results recorded for '{federation}' yet")
        shown = round_number if round_number is not None else max(item.round for item in items)
        console.print(tables.results_table(items, shown))


@app.command()
def ledger(
    ctx: typer.Context,
    federation: Annotated[str | None, typer.Option(help="Only this federation.")] = None,
    institution: Annotated[str | None, typer.Option(help="Only this institution.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The privacy ledger: reported and recomputed ε per institution and round, and the
    ended rounds whose spend was never reported."""
    with _client(ctx) as client:
        items = client.ledger(federation, institution)
        missing = [
            item
            for item in client.unreported_spends(federation)
            if institution is None or item.institution == institution
        ]
    if as_json:
        _emit_json(items)
        return
    console.print(tables.ledger_table(items))
    for item in missing:
        typer.echo(
            f"warning: '{item.institution}' uploaded an update in round {item.round} of "
            f"'{item.federation}' ({item.stage}) but its spend was never reported: the "
            "ledger is a lower bound there",
            err=True,
        )


@app.command()
def models(
    ctx: typer.Context,
    federation: Annotated[str, typer.Argument(help="Federation name.")],
    as_json: JsonOption = False,
) -> None:
    """A federation's model versions."""
    with _client(ctx) as client:
        items = client.models(federation)
        _emit_json(items) if as_json else console.print(tables.models_table(items))


@app.command("audit-verify")
def audit_verify(
    ctx: typer.Context,
    expect_head: Annotated[
        str | None,
        typer.Option(
            help="A head hash this command printed earlier: the log must still contain it "
            "(a history rewritten or cut short since then no longer does)."
        ),
    ] = None,
) -> None:
    """Verify the audit log's hash chain and its signed checkpoints (exit status 3 when
    either is broken or the expected head is gone)."""
    if expect_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expect_head):
        _fail("--expect-head: a head hash is 64 lowercase hex digits")
    with _client(ctx) as client:
        result = client.audit_verify(expect_head)
    if not result.ok:
        where = "" if result.first_broken_seq is None else f" at entry {result.first_broken_seq}"
        typer.echo(f"error: audit log broken{where}: {result.reason}", err=True)
        raise typer.Exit(3)
    latest = result.latest_checkpoint
    anchored = (
        "no signed checkpoint yet"
        if latest is None
        else f"{result.checkpoints} signed checkpoints, the latest ({latest.number}) at entry "
        f"{latest.audit_seq}, key {latest.key_id[:16]}"
    )
    typer.echo(f"audit log intact: {result.entries} entries, head {result.head_hash}; {anchored}")
    if expect_head is not None:
        typer.echo(f"expected head {expect_head[:16]}... is in the log")


@app.command("verify-report")
def verify_report(
    report: Annotated[Path, typer.Argument(help="The privacy report (HTML or JSON) to check.")],
    key_id: Annotated[
        str | None,
        typer.Option(
            help="The coordinator's key id (`fmtl coordinator signing-key`); without it the "
            "report is checked against the key it names."
        ),
    ] = None,
    every_line: Annotated[
        bool, typer.Option("--every-line", help="Recompute ε of every line, not only totals.")
    ] = False,
    recompute: Annotated[
        bool, typer.Option(help="Recompute ε from the reported (σ, q, steps) histories.")
    ] = True,
) -> None:
    """Check an auditor's privacy report offline: signature, key, page and arithmetic."""
    from fmtl.admin.report_check import ReportUnreadable
    from fmtl.admin.report_check import verify_report as check

    try:
        verdict = check(report, expected_key_id=key_id, recompute=recompute, every_line=every_line)
    except ReportUnreadable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for line in verdict.checks:
        typer.echo(f"ok: {line}")
    for problem in verdict.problems:
        typer.echo(f"FAILED: {problem}", err=True)
    if not verdict.ok:
        raise typer.Exit(1)
    typer.echo(f"verified: privacy report of {verdict.federation}, key {verdict.key_id}")


# The roster commands register themselves on `app` (fmtl/admin/roster_cli.py).
from fmtl.admin import roster_cli as _roster_cli  # noqa: E402, F401
