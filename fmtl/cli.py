"""The `fmtl` command: one entry point over the agent, the coordinator and the demo.

Each part is imported only when present, so an institution that installed only
`fmtl[agent]` still gets `fmtl agent ...`, and a missing part says what to install.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="fmtl",
    help="Privacy-hardened federated multi-task learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (name, module:attribute of a Typer app, extra that provides it, help)
_PARTS: tuple[tuple[str, str, str, str], ...] = (
    (
        "coordinator",
        "coordinator.cli:app",
        "coordinator",
        "Run the coordinator: API server, workers, scheduler, migrations, bootstrap.",
    ),
    (
        "agent",
        "agent.cli:app",
        "agent",
        "Run an institution's agent: enroll, run the daemon, check, status.",
    ),
    ("admin", "fmtl.admin.cli:app", "agent", "Drive a coordinator's API as an admin."),
    (
        "demo",
        "fmtl.demo.cli:app",
        "all",
        "Run four hospitals' federation end to end on this machine.",
    ),
)
_OURS = frozenset({"fmtl", "federation", "privacy", "coordinator", "agent"})


def _missing(name: str, extra: str, error: ImportError) -> typer.Typer:
    stub = typer.Typer(help=f"(unavailable: pip install 'fmtl[{extra}]')")

    @stub.callback(invoke_without_command=True)
    def _explain() -> None:
        typer.echo(
            f"error: `fmtl {name}` needs the '{extra}' extra ({error}); "
            f"install it with: pip install 'fmtl[{extra}]'",
            err=True,
        )
        raise typer.Exit(2)

    return stub


def _load(target: str) -> typer.Typer:
    module_name, _, attribute = target.partition(":")
    sub: typer.Typer = getattr(importlib.import_module(module_name), attribute)
    return sub


for _name, _target, _extra, _help in _PARTS:
    try:
        _sub = _load(_target)
    except ModuleNotFoundError as exc:  # only a missing dependency or part, never a bug
        if exc.name is not None and exc.name.split(".")[0] in _OURS:
            raise
        _sub = _missing(_name, _extra, exc)
    app.add_typer(_sub, name=_name, help=_help)


@app.callback()
def _root() -> None:
    """Privacy-hardened federated multi-task learning."""


@app.command()
def version() -> None:
    """Print the fmtl version."""
    from fmtl import __version__

    typer.echo(__version__)


def main() -> None:
    app(prog_name="fmtl", args=sys.argv[1:])


if __name__ == "__main__":
    main()
