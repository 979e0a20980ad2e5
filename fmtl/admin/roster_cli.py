"""`fmtl admin roster-key` and `fmtl admin publish-roster`: the federation's signed roster.

    fmtl admin roster-key ~/.fmtl/roster.key        # once: prints the fingerprint to hand out
    fmtl admin publish-roster heart_disease --key ~/.fmtl/roster.key

Institutions pin the fingerprint at enrollment (`fmtl agent enroll --roster-key`). After
each enrollment (or revocation) the admin publishes the next roster version; agents take
part only in rounds whose every participant is on it (docs/secagg.md, "Threat model").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from federation.roster import key_fingerprint, roster_changes, show_fingerprint
from fmtl.admin.cli import _client, _fail, app
from fmtl.admin.roster import (
    RosterKeyError,
    create_roster_key,
    draft_next,
    load_roster_key,
    public_fingerprint,
    sign_roster,
)


@app.command("roster-key")
def roster_key(
    path: Annotated[Path, typer.Argument(help="The key file (made, mode 0600, if missing).")],
) -> None:
    """Make the admin's roster signing key (kept off the coordinator); print its fingerprint."""
    try:
        key = load_roster_key(path) if path.exists() else create_roster_key(path)
    except RosterKeyError as exc:
        _fail(str(exc))
    fingerprint = public_fingerprint(key)
    typer.echo(
        f"roster key {path}; institutions pin its fingerprint with "
        "`fmtl agent enroll --roster-key ...`:",
        err=True,
    )
    typer.echo(fingerprint)
    typer.echo(f"({show_fingerprint(fingerprint)})", err=True)


@app.command("publish-roster")
def publish_roster(
    ctx: typer.Context,
    federation: Annotated[str, typer.Argument(help="Federation name.")],
    key: Annotated[Path, typer.Option("--key", help="The admin's roster key file.")],
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            help="Sign without asking (after checking each member's key fingerprint with its "
            "institution: `fmtl agent status` shows it).",
        ),
    ] = False,
) -> None:
    """Sign and publish the next roster version: every enrolled institution and its key."""
    try:
        private_key = load_roster_key(key)
    except RosterKeyError as exc:
        _fail(str(exc))
    with _client(ctx) as client:
        roster, current = draft_next(client, federation)
        if not roster.members:
            _fail(f"federation '{federation}' has no enrolled institution to list")
        changes = roster_changes(current, roster)
        if current is not None and not changes:
            typer.echo(f"roster version {current.version} is current; nothing to sign")
            return
        typer.echo(f"roster version {roster.version} of '{federation}':", err=True)
        for member in roster.members:
            shown = show_fingerprint(key_fingerprint(member.public_key))
            typer.echo(f"  {member.institution}: key {shown}", err=True)
        for line in changes:
            typer.echo(f"  {line}", err=True)
        if not yes and not typer.confirm(
            "Do these keys match what each institution's `fmtl agent status` shows?"
        ):
            _fail("not signed")
        published = client.publish_roster(federation, sign_roster(roster, private_key))
        typer.echo(
            f"published roster version {published['version']} of '{federation}' "
            f"({published['members']} institutions)"
        )
