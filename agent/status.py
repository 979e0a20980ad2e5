"""What `fmtl agent status` shows: enrollment and pinned keys, rounds and refusals, the
budget spent and left, and the local models' figures (read from the state folder only)."""

from __future__ import annotations

from typing import Any

from agent.config import AgentConfig
from agent.errors import ConfigError


def status_document(config: AgentConfig) -> dict[str, Any]:
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
            "roster_key": enrollment.roster_key,
            "identity_fingerprint": enrollment.identity_fingerprint,
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
            document["roster"] = _held_roster(ledger)
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


def _held_roster(ledger: Any) -> dict[str, Any] | None:
    """The newest signed roster this agent verified (agent.roster), as status shows it."""
    from agent.roster import ROSTER_MEMO
    from federation.roster import SignedRoster

    kept = ledger.remembered(ROSTER_MEMO)
    if kept is None:
        return None
    roster = SignedRoster.model_validate(kept["signed"]).roster
    return {
        "version": roster.version,
        "issued_at": roster.issued_at.isoformat(),
        "members": [member.institution for member in roster.members],
    }


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


def print_status(document: dict[str, Any]) -> None:
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
        table.add_row("identity key", enrollment["identity_fingerprint"] or "(not recorded)")
        pinned = enrollment["roster_key"]
        table.add_row(
            "roster key (pinned)",
            pinned or "[red]none: enroll again with --roster-key to take part in rounds[/]",
        )
        held = document.get("roster")
        if held:
            table.add_row(
                "signed roster",
                f"version {held['version']}: {', '.join(held['members'])}",
            )
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


__all__ = ["print_status", "status_document"]
