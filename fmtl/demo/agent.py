"""`python -m fmtl.demo.agent --config agent.toml`: an agent daemon for seeded demos only.

`fmtl demo --seed S` and `benchmarks/heart_disease.py --service` replay a run exactly, DP
noise included, so that the service's results can be compared with the in-process
benchmark's. That needs `[testing] reproducible_dp_seed` in each agent.toml, which makes
the noise predictable and which `fmtl agent run` therefore refuses. This runner is the
same daemon with that one switch allowed; it is not an entry point of the `fmtl` command
and never for an institution's agent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.config import load_config
from agent.daemon import run_daemon
from agent.errors import AgentError
from agent.logging import LogFormat, configure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    configure(LogFormat.TEXT, level="INFO")
    try:
        config = load_config(args.config)
        return run_daemon(config, show_progress=False, allow_testing_switches=True)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
