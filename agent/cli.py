"""`fmtl agent ...`: enroll an institution, run its daemon, check its setup, show its status.

    fmtl agent enroll --coordinator https://fl.example.org --token TOKEN --config agent.toml
    fmtl agent check  --config agent.toml
    fmtl agent propose-scales --config agent.toml
    fmtl agent run    --config agent.toml [--log-format json] [--max-rounds N | --once]
    fmtl agent status --config agent.toml [--json]

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
from typing import Annotated, Any, Final, NoReturn

import typer

from agent.config import AgentConfig, load_config, refuse_testing_switches
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
        precheck_columns(config)
        key = load_identity(config.key_file, config.key_passphrase) if existing_key else None
        enrollment, identity = enroll_agent(
            config, coordinator=url, token=token, force=force, identity=key
        )
        if force:
            EncryptedFileStore(config.rounds_dir, identity).clear()
        profile = enrollment.profile
        typer.echo(
            f"enrolled '{profile.institution}' in federation '{profile.federation}' "
            f"(key id {profile.key_id}, tasks: {', '.join(profile.tasks_held)})"
        )
        typer.echo(f"identity key: {config.key_file}")
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


def _status_document(config: AgentConfig) -> dict[str, Any]:
    from agent.enrollment import NotEnrolled, coordinator_url, load_enrollment
    from agent.ledger import MODEL_METRICS_MEMO, Ledger, RoundStatus
    from agent.refusals import refusals
    from privacy.dp.accountant import epsilon_for
    from privacy.dp.noise import NoiseDraws, sampler_slack

    document: dict[str, Any] = {"config": str(config.source), "state_dir": str(config.state_dir)}
    try:
        enrollment = load_enrollment(config)
    except NotEnrolled:
        document["enrolled"] = False
    else:
        profile = enrollment.profile
        document["enrolled"] = True
        document["enrollment"] = {
            "institution": profile.institution,
            "federation": profile.federation,
            "key_id": profile.key_id,
            "coordinator": coordinator_url(config, enrollment),
            "tasks_held": list(profile.tasks_held),
            "enrolled_at": profile.enrolled_at.isoformat(),
            "spec_fingerprint": profile.spec_fingerprint,
        }
    privacy = config.privacy
    rounds: dict[str, int] = {status.value: 0 for status in RoundStatus}
    last_round: dict[str, Any] | None = None
    history: list[tuple[float, float, int]] = []
    model_metrics: dict[str, Any] | None = None
    draws = NoiseDraws()
    refused: list[dict[str, Any]] = []
    if config.ledger_file.exists():
        with Ledger.open(config.ledger_file) as ledger:
            refused = refusals(ledger)
            model_metrics = ledger.remembered(MODEL_METRICS_MEMO)
            draws = ledger.noise_draws()
            summary = ledger.summary()
            rounds = {status.value: n for status, n in summary.rounds.items()}
            history = ledger.history()
            entries = ledger.rounds()
            if entries:
                last = entries[-1]
                last_round = {
                    "federation": last.federation,
                    "round": last.round,
                    "status": last.status.value,
                    "reason": last.reason,
                    "updated_at": last.updated_at.isoformat(),
                }
    spent = epsilon_for(history, privacy.delta, privacy.accountant)
    slack = sampler_slack(draws)
    document["rounds"] = {
        **rounds,
        "joined": sum(n for status, n in rounds.items() if status != RoundStatus.DECLINED.value),
        "last": last_round,
    }
    # Rounds this agent's policy refused (agent.round_policy), the latest last.
    document["refusals"] = refused
    document["training"] = _training_device(config.training.device)
    document["budget"] = {
        "epsilon": privacy.epsilon,
        "delta": privacy.delta,
        "accountant": privacy.accountant,
        "epsilon_spent": spent,
        "epsilon_left": max(0.0, privacy.epsilon - spent),
        "trainings": len(history),
        # What the noise sampler adds to (ε, δ) (privacy/dp/noise.py), reserved in the budget.
        "sampler_slack_epsilon": slack.epsilon,
        "sampler_slack_delta": slack.delta(0.0),
        "noise_pairs": draws.pairs,
    }
    # Local only: the federated and the personalised model on the local validation split,
    # measured at the start of each round trained (never sent as such); the latest first.
    history = (model_metrics or {}).get("history", [])
    document["models"] = {"latest": history[-1] if history else None, "history": history}
    return document


def _training_device(setting: str) -> dict[str, Any]:
    """Where training runs: the configured device, what it resolves to here, and the GPU."""
    import torch

    from agent.training import resolve_device

    document: dict[str, Any] = {"configured": setting}
    try:
        device = resolve_device(setting)
    except ConfigError as exc:
        document["device"] = None
        document["problem"] = str(exc)
        return document
    document["device"] = device.type
    if device.type == "cuda":
        document["gpu"] = torch.cuda.get_device_name(device)
    return document


@app.command()
def status(
    config_file: ConfigOption = Path("agent.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Enrollment, rounds joined / declined / completed, and the privacy budget spent / left."""
    with _readable_errors():
        config = load_config(config_file)
        document = _status_document(config)
        if as_json:
            typer.echo(json.dumps(document, indent=2))
            return
        _print_status(document)


def _print_status(document: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title="fmtl agent", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    if document["enrolled"]:
        enrollment = document["enrollment"]
        table.add_row("institution", enrollment["institution"])
        table.add_row("federation", enrollment["federation"])
        table.add_row("key id", enrollment["key_id"])
        table.add_row("coordinator", enrollment["coordinator"])
        table.add_row("tasks held", ", ".join(enrollment["tasks_held"]))
        table.add_row("enrolled at", enrollment["enrolled_at"])
    else:
        table.add_row("enrollment", "[yellow]not enrolled[/] (fmtl agent enroll ...)")
    rounds = document["rounds"]
    table.add_section()
    table.add_row("rounds joined", str(rounds["joined"]))
    table.add_row("rounds completed", str(rounds["completed"]))
    table.add_row("rounds declined", str(rounds["declined"]))
    table.add_row("rounds dropped / failed", f"{rounds['dropped']} / {rounds['failed']}")
    if rounds["last"]:
        last = rounds["last"]
        reason = f" ({last['reason']})" if last["reason"] else ""
        table.add_row("last round", f"{last['round']}: {last['status']}{reason}")
    if document.get("refusals"):
        latest = document["refusals"][-1]
        table.add_row(
            "[red]last refusal[/]",
            escape(f"round {latest['round']} ({latest['at']}): {latest['reason']}"),
        )
    training = document["training"]
    table.add_section()
    if training["device"] is None:
        device = f"[red]{training['problem']}[/]"
    elif training["device"] == "cuda":
        device = f"[green]cuda[/] ({training['gpu']}; configured {training['configured']})"
    else:
        device = f"cpu (configured {training['configured']}; no CUDA device here)"
        if training["configured"] == "cpu":
            device = "cpu (configured cpu)"
    table.add_row("training device", device)
    budget = document["budget"]
    table.add_section()
    table.add_row(
        "privacy budget",
        f"ε = {budget['epsilon']:g}, δ = {budget['delta']:g} ({budget['accountant']})",
    )
    share = budget["epsilon_spent"] / budget["epsilon"] if budget["epsilon"] else 0.0
    colour = "green" if share < 0.8 else "yellow" if share < 1.0 else "red"
    table.add_row(
        "ε spent / left",
        f"[{colour}]{budget['epsilon_spent']:.3f}[/] / {budget['epsilon_left']:.3f} "
        f"({100 * share:.0f}% spent, {budget['trainings']} trainings)",
    )
    table.add_row(
        "noise sampler's slack",
        f"ε + {budget['sampler_slack_epsilon']:.2g}, δ + {budget['sampler_slack_delta']:.2g} "
        f"over {budget['noise_pairs']:,} noise pairs (reserved in the budget)",
    )
    models = (document.get("models") or {}).get("latest")
    if models:
        table.add_section()
        table.add_row("models (local)", f"validation split, start of round {models['round']}")
        for task, values in models["global"].items():
            line = _metric_line(values)
            personal = (models.get("personal") or {}).get(task)
            if personal is not None:
                line = f"federated {line}  |  personalised {_metric_line(personal)}"
            table.add_row(f"  {task}", line)
    console.print(table)


def _metric_line(values: dict[str, float]) -> str:
    shown = ("auc", "accuracy", "balanced_accuracy", "ece", "mae")
    return ", ".join(f"{name} {values[name]:.3f}" for name in shown if name in values)


__all__ = ["app"]
