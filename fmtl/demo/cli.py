"""`fmtl demo`: four hospitals' federation, end to end, on this machine, in one command.

A real coordinator (`fmtl coordinator serve`) and four real agents (`fmtl agent run`, one
process per hospital, each with its own data file and its own tasks) talk HTTP on loopback
with signed requests; R rounds of secure aggregation with differential privacy run; per
round the demo prints task-wise results and each hospital's ε; at the end it writes a
self-contained HTML report and prints its path. See docs/demo.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="demo",
    help="Run four hospitals' federation end to end on this machine (see docs/demo.md).",
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


@app.callback(invoke_without_command=True)
def demo(
    rounds: Annotated[int, typer.Option(min=1, max=1000, help="Rounds to run.")] = 10,
    epsilon: Annotated[
        float, typer.Option(min=0.01, max=1000.0, help="Each hospital's privacy budget ε.")
    ] = 8.0,
    agents_drop_at: Annotated[
        str | None,
        typer.Option(
            help="Kill one agent when a round reaches this stage (advertise_keys, share_keys, "
            "masked_input, consistency_check, unmasking), then restart it after the round.",
        ),
    ] = None,
    drop_round: Annotated[
        int | None, typer.Option(min=1, help="The round of --agents-drop-at (default 2).")
    ] = None,
    drop_agent: Annotated[
        str | None, typer.Option(help="The hospital whose agent is killed (default: the last).")
    ] = None,
    postgres: Annotated[
        str | None,
        typer.Option(help="Run the coordinator on this PostgreSQL database (postgresql://...)."),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(help="Use this Redis as the broker, with separate worker and beat processes."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default ./fmtl-demo/<UTC time>); must be new or empty."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Make the run reproducible: seeds the initial model, the data splits and each "
            "agent's training, DP noise included (default: unseeded, noise from the OS).",
        ),
    ] = None,
    stage_timeout: Annotated[
        float, typer.Option(min=1.0, help="Deadline of each protocol stage (seconds).")
    ] = 30.0,
    local_epochs: Annotated[
        float | None, typer.Option(min=0.01, help="Override the spec's local epochs per round.")
    ] = None,
    device: Annotated[
        str,
        typer.Option(help="Where the agents train: cpu, cuda or auto (CUDA when available)."),
    ] = "cpu",
    example: Annotated[
        str | None,
        typer.Option(
            help="A shipped example, heart_disease (default) or images (handwritten digits, "
            "a convolutional encoder), or the folder of one (federation.json, "
            "mapping_<institution>.toml).",
        ),
    ] = None,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="After the report, keep the coordinator up and print its web console's URL "
            "(sign in with the admin token the run folder holds) until Ctrl-C.",
        ),
    ] = False,
    share_own_metrics: Annotated[
        list[str] | None,
        typer.Option(
            help="A hospital that opts in to send its own validation metrics in clear "
            "(repeat for several; default none: results are federation-wide only).",
        ),
    ] = None,
) -> None:
    """Run four hospitals' federation end to end and write an HTML report."""
    from rich.console import Console

    from fmtl.demo.processes import DemoError
    from fmtl.demo.run import DemoOptions, Interrupted, run_demo

    options = DemoOptions(
        rounds=rounds,
        epsilon=epsilon,
        agents_drop_at=agents_drop_at,
        drop_round=drop_round,
        drop_agent=drop_agent,
        postgres=postgres,
        redis=redis,
        out=out,
        seed=seed,
        example=example,
        stage_timeout_s=stage_timeout,
        local_epochs=local_epochs,
        device=device,
        serve=serve,
        share_own_metrics=tuple(share_own_metrics or ()),
    )
    try:
        run_demo(options, Console())
    except Interrupted as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except DemoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
