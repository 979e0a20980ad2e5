"""`fmtl agent ...`: enroll an institution, run its daemon, check its setup, show its status.

    fmtl agent enroll --coordinator https://fl.example.org --token TOKEN --config agent.toml
    fmtl agent check  --config agent.toml
    fmtl agent propose-scales --config agent.toml
    fmtl agent run    --config agent.toml [--log-format json] [--max-rounds N | --once]
    fmtl agent status --config agent.toml [--json]
    fmtl agent accept-spec --config agent.toml [--yes]

Every failure is one line on stderr (`error: <file>: <key>: what to fix`) and a non-zero
exit status, never a traceback: 2 for input to fix (agent.toml, the data, the command
line), 1 for everything else (the coordinator refused or is unreachable, a damaged state).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Final, NoReturn

import typer

from agent.config import load_config, refuse_testing_switches
from agent.errors import AgentError, ConfigError, DataError
from agent.logging import LogFormat, configure

app = typer.Typer(
    name="agent",
    help="The institution's agent: enroll once, then run the daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_FAILURE: Final = 1
EXIT_INPUT: Final = 2

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="The agent's configuration file.",
        dir_okay=False,
        resolve_path=False,
    ),
]


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    typer.echo(f"error: {first}", err=True)
    raise typer.Exit(code)


@contextmanager
def _readable_errors() -> Iterator[None]:
    """Every expected failure becomes one line; unexpected ones too, named by their type."""
    from privacy.dp.errors import DPError

    try:
        yield
    except typer.Exit:
        raise
    except (ConfigError, DataError) as exc:
        _fail(str(exc), EXIT_INPUT)
    except (AgentError, DPError) as exc:
        _fail(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or type(exc).__name__}")
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        _fail(f"unexpected {type(exc).__name__}: {exc}")


@app.command()
def enroll(
    config_file: ConfigOption = Path("agent.toml"),
    token: Annotated[
        str | None,
        typer.Option(
            help="The one-time enrollment token from the federation's admin "
            "(asked for when not given and a terminal is attached).",
            envvar="FMTL_AGENT_ENROLLMENT_TOKEN",
            show_envvar=True,
        ),
    ] = None,
    coordinator: Annotated[
        str | None,
        typer.Option(
            help="The coordinator's URL (default: the url in the coordinator section of "
            "agent.toml)."
        ),
    ] = None,
    roster_key: Annotated[
        str | None,
        typer.Option(
            "--roster-key",
            help="Fingerprint of the federation admin's roster key, from the admin (out of "
            "band: `fmtl admin roster-key` prints it). Pinned: rounds are joined only with "
            "peers on a roster signed by this key.",
            envvar="FMTL_AGENT_ROSTER_KEY",
            show_envvar=True,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing identity and enrollment.")
    ] = False,
    existing_key: Annotated[
        bool,
        typer.Option(
            "--existing-key",
            help="Enroll the key already at the configured key file (made beforehand, e.g. a "
            "mounted secret) instead of generating one.",
        ),
    ] = False,
    skip_if_enrolled: Annotated[
        bool,
        typer.Option(
            "--skip-if-enrolled",
            help="Exit 0 without enrolling when this state folder is already enrolled "
            "(for init containers).",
        ),
    ] = False,
) -> None:
    """Make this institution's identity key and enroll it with the coordinator (once)."""
    with _readable_errors():
        from agent.enrollment import enroll as enroll_agent
        from agent.identity import load_identity
        from agent.sources import check_local_data, precheck_columns
        from agent.state_store import EncryptedFileStore

        configure(LogFormat.TEXT, level="WARNING")
        config = load_config(config_file)
        if skip_if_enrolled and config.profile_file.exists():
            typer.echo(f"already enrolled ({config.profile_file}); nothing to do")
            return
        if not token:
            if not sys.stdin.isatty():
                raise ConfigError(
                    "--token: missing; give the enrollment token from the federation's admin "
                    "(or set FMTL_AGENT_ENROLLMENT_TOKEN)"
                )
            token = typer.prompt("Enrollment token", hide_input=True)
        url = coordinator or config.coordinator.url
        if not url:
            raise ConfigError(
                "--coordinator: missing; give the coordinator's URL (or set [coordinator] url "
                f"in {config.source})"
            )
        if not roster_key:
            raise ConfigError(
                "--roster-key: missing; give the fingerprint of the federation admin's roster "
                "key (ask the admin: `fmtl admin roster-key` prints it)"
            )
        precheck_columns(config)
        key = load_identity(config.key_file, config.key_passphrase) if existing_key else None
        enrollment, identity = enroll_agent(
            config,
            coordinator=url,
            token=token,
            roster_key=roster_key,
            force=force,
            identity=key,
        )
        if force:
            EncryptedFileStore(config.rounds_dir, identity).clear()
        profile = enrollment.profile
        typer.echo(
            f"enrolled '{profile.institution}' in federation '{profile.federation}' "
            f"(key id {profile.key_id}, tasks: {', '.join(profile.tasks_held)})"
        )
        typer.echo(
            f"identity key: {config.key_file} (fingerprint {enrollment.identity_fingerprint}: "
            "the admin checks it before signing the roster)"
        )
        typer.echo(f"pinned roster key: {enrollment.roster_key}")
        typer.echo(f"state folder: {config.state_dir}")
        dataset = check_local_data(config, enrollment)
        typer.echo(
            f"data: {dataset.n_train} training and {dataset.n_validation} validation rows, "
            f"tasks {', '.join(dataset.tasks_held)}"
        )
        typer.echo(f"next: fmtl agent run --config {config_file}")


@app.command()
def check(config_file: ConfigOption = Path("agent.toml")) -> None:
    """Check agent.toml, the identity key and the data against the enrolled federation."""
    with _readable_errors():
        from agent.enrollment import load_enrollment
        from agent.identity import load_identity
        from agent.sources import check_local_data

        configure(LogFormat.TEXT, level="WARNING")
        config = load_config(config_file)
        refuse_testing_switches(config)
        enrollment = load_enrollment(config)
        load_identity(config.key_file, config.key_passphrase)
        dataset = check_local_data(config, enrollment)
        from agent.sources import describe

        typer.echo(
            f"ok: '{enrollment.profile.institution}' in '{enrollment.profile.federation}'; "
            f"{dataset.n_train} training and {dataset.n_validation} validation rows; "
            f"tasks {', '.join(dataset.tasks_held)}"
        )
        for line in describe(dataset, enrollment.profile.spec):
            typer.echo(f"  {line}")
        if dataset.scaling is not None:
            typer.echo(f"  {dataset.scaling.describe()}")


@app.command("accept-spec")
def accept_spec(
    config_file: ConfigOption = Path("agent.toml"),
    yes: Annotated[
        bool, typer.Option("--yes", help="Pin the coordinator's spec without asking.")
    ] = False,
) -> None:
    """Show how the coordinator's federation spec differs from the pinned one; pin it on consent.

    Rounds of any spec but the pinned one are refused; this is the only way to change it."""
    with _readable_errors():
        import json as json_module

        from agent.daemon import _client
        from agent.enrollment import load_enrollment
        from agent.identity import load_identity, write_private_file
        from agent.spec_change import check_offered, pinned_with

        configure(LogFormat.TEXT, level="WARNING")
        config = load_config(config_file)
        enrollment = load_enrollment(config)
        identity = load_identity(config.key_file, config.key_passphrase)
        with _client(config, enrollment, identity) as client:
            offered = client.profile()
        changes = check_offered(enrollment, offered)
        if not changes:
            typer.echo(f"the pinned spec is the coordinator's ({enrollment.spec_fingerprint})")
            return
        typer.echo(
            f"the coordinator's spec of '{offered.federation}' differs from the pinned one "
            f"({enrollment.spec_fingerprint[:12]} -> {offered.spec_fingerprint[:12]}):"
        )
        for line in changes:
            typer.echo(f"  {line}")
        if not yes and not typer.confirm("Pin the new spec (rounds of it will be joined)?"):
            _fail("not accepted; rounds of the new spec keep being refused")
        accepted = pinned_with(enrollment, offered)
        write_private_file(
            config.profile_file,
            json_module.dumps(accepted.model_dump(mode="json"), indent=2).encode("utf-8"),
        )
        typer.echo(f"pinned spec {offered.spec_fingerprint}")


@app.command("propose-scales")
def propose_scales_command(config_file: ConfigOption = Path("agent.toml")) -> None:
    """Propose public feature and label scales from the local data (to review, then agree on).

    Under DP every standardisation must be fixed in the data mapping and the same at every
    institution. This prints the local mean and standard deviation of each feature and
    regression label (2 significant digits) as mapping TOML. Review them before sharing:
    once in a mapping they are public, and they describe this institution's data.
    """
    with _readable_errors():
        from agent.data import propose_scales
        from agent.enrollment import load_enrollment
        from agent.mapping import DataMapping

        configure(LogFormat.TEXT, level="WARNING")
        config = load_config(config_file)
        if not isinstance(config.data, DataMapping):
            raise ConfigError(
                f"{config.source}: data: an image mapping declares its normalisation "
                "(range, mean, std) itself; there are no feature scales to propose"
            )
        spec = load_enrollment(config).profile.spec
        try:
            proposed = propose_scales(config.data, spec)
        except DataError as exc:
            raise DataError(f"{config.source}: data.{exc}") from None
        typer.echo(
            f"# PROPOSED from {proposed.rows} local rows of {config.data.path.name}: TO BE "
            "REVIEWED.\n# These values become PUBLIC once in a data mapping (every "
            "institution uses the\n# same ones) and they describe this institution's data "
            "(its means and standard\n# deviations). Agree on them across the federation, or "
            "take them from a published\n# reference, before pasting them into the mapping."
        )
        typer.echo("[feature_scales]")
        for name, scale in proposed.features.items():
            typer.echo(f"{name} = {{ center = {scale.center!r}, scale = {scale.scale!r} }}")
        for task, scale in proposed.labels.items():
            column = config.data.label_column(task).column
            typer.echo(
                f"# [labels] {task} = {{ column = {column!r}, center = {scale.center!r}, "
                f"scale = {scale.scale!r} }}"
            )


@app.command()
def run(
    config_file: ConfigOption = Path("agent.toml"),
    log_format: Annotated[
        LogFormat, typer.Option(help="Log lines as text, or as JSON objects (one per line).")
    ] = LogFormat.TEXT,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    max_rounds: Annotated[
        int | None,
        typer.Option(min=1, help="Exit 0 after this many rounds ended for this agent."),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Same as --max-rounds 1.")] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Rich progress bars while training (default: when stderr is a terminal).",
        ),
    ] = None,
) -> None:
    """Run the daemon: take part in every round, until stopped (SIGTERM/SIGINT: exit 0)."""
    with _readable_errors():
        level = log_level.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"--log-level: '{log_level}' is not debug, info, warning or error")
        configure(log_format, level=level)
        config = load_config(config_file)
        from agent.daemon import run_daemon

        limit = 1 if once else max_rounds
        show_progress = sys.stderr.isatty() if progress is None else progress
        raise typer.Exit(run_daemon(config, max_rounds=limit, show_progress=show_progress))


@app.command()
def status(
    config_file: ConfigOption = Path("agent.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Enrollment, rounds joined / declined / completed, and the privacy budget spent / left."""
    with _readable_errors():
        from agent.status import print_status, status_document

        config = load_config(config_file)
        document = status_document(config)
        if as_json:
            typer.echo(json.dumps(document, indent=2))
            return
        print_status(document)


__all__ = ["app"]
