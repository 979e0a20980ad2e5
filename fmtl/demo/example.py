"""The demo's material: the heart-disease federation spec and one data mapping per hospital.

The example lives in `examples/heart_disease/` of the source tree (with `pip install -e .`
the package finds it beside itself); `--example DIR` points at a copy anywhere else. A
folder qualifies when it holds `federation.json` and at least one `mapping_<hospital>.toml`.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fmtl.demo.processes import DemoError

EXAMPLE_NAME: Final = "heart_disease"
SPEC_FILE: Final = "federation.json"
MAPPING_PREFIX: Final = "mapping_"
#: Optional: the `[personalisation]` section of every hospital's agent.toml.
PERSONALISATION_FILE: Final = "personalisation.toml"
#: Examples whose data is written at run time from a package the project depends on (no
#: download): the example's name, and the module whose `materialise(folder)` writes it.
#: The mappings' relative paths then resolve against the folder it was written to.
GENERATED_DATA: Final = {"images": "fmtl.demo.digits"}
#: The mapping keys that hold a data file's path: a table's `path`, an image `manifest`.
PATH_KEYS: Final = ("path", "manifest")


@dataclass(frozen=True)
class Hospital:
    """One institution of the example: its data mapping and the tasks it holds labels for."""

    name: str
    mapping_file: Path
    mapping: dict[str, Any]

    @property
    def tasks(self) -> list[str]:
        return list(self.mapping.get("labels", {}))


@dataclass(frozen=True)
class Example:
    folder: Path
    spec: dict[str, Any]
    hospitals: tuple[Hospital, ...]
    #: The `[personalisation]` section every hospital's agent.toml gets (from the example's
    #: optional `personalisation.toml`): a local choice of each institution, the same here.
    personalisation: dict[str, Any] = field(default_factory=dict)

    @property
    def task_kinds(self) -> dict[str, str]:
        return {task["name"]: task["kind"] for task in self.spec.get("tasks", [])}


def candidate_folders(name: str = EXAMPLE_NAME) -> list[Path]:
    """Where the example `name` may be, most specific first."""
    package = Path(__file__).resolve().parent.parent
    return [
        package.parent / "examples" / name,  # source tree, `pip install -e .`
        package / "examples" / name,  # shipped inside the package
        Path.cwd() / "examples" / name,
    ]


def locate_example(explicit: Path | str | None = None) -> Path:
    """The example folder: `explicit` is a folder, or the name of a shipped example
    (`heart_disease`, `images`); None is the heart-disease example."""
    name = EXAMPLE_NAME
    if explicit is not None:
        folder = Path(explicit)
        if (folder / SPEC_FILE).is_file():
            return folder.resolve()
        if folder.exists() or "/" in str(explicit) or folder.name != str(explicit):
            raise DemoError(
                f"{explicit} has no {SPEC_FILE}: --example must name an example "
                "(heart_disease, images) or an example folder"
            )
        name = str(explicit)
    for folder in candidate_folders(name):
        if (folder / SPEC_FILE).is_file():
            return folder
    raise DemoError(
        f"cannot find examples/{name}/{SPEC_FILE} (looked in "
        f"{', '.join(str(f) for f in candidate_folders(name))}): run from the source tree, "
        "name a shipped example (heart_disease, images) or pass --example DIR"
    )


def generate_data(example: Example, run_dir: Path) -> Path | None:
    """Write the data of an example that is generated at run time (`GENERATED_DATA`) under
    the run folder; the folder its mappings' paths resolve against (None: their own)."""
    module_name = GENERATED_DATA.get(example.folder.name)
    if module_name is None:
        return None
    import importlib

    root = run_dir / "example-data"
    try:
        importlib.import_module(module_name).materialise(root / "data")
    except (RuntimeError, OSError) as exc:
        raise DemoError(f"cannot write the {example.folder.name} example's data: {exc}") from None
    return root


def load_example(folder: Path) -> Example:
    try:
        spec = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DemoError(f"cannot read {folder / SPEC_FILE}: {exc}") from None
    hospitals = []
    for file in sorted(folder.glob(f"{MAPPING_PREFIX}*.toml")):
        try:
            mapping = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise DemoError(f"cannot read {file}: {exc}") from None
        hospitals.append(Hospital(file.stem.removeprefix(MAPPING_PREFIX), file, mapping))
    if not hospitals:
        raise DemoError(f"{folder} has no {MAPPING_PREFIX}<hospital>.toml data mappings")
    personalisation: dict[str, Any] = {}
    local = folder / PERSONALISATION_FILE
    if local.is_file():
        try:
            personalisation = dict(tomllib.loads(local.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise DemoError(f"cannot read {local}: {exc}") from None
    return Example(
        folder=folder, spec=spec, hospitals=tuple(hospitals), personalisation=personalisation
    )


def demo_spec(
    example: Example,
    *,
    name: str,
    rounds: int,
    seed: int | None,
    stage_timeout_s: float,
    local_epochs: float | None = None,
    secure: bool = True,
) -> dict[str, Any]:
    """The example's spec, fitted to this run: its name, planned rounds, seed and deadlines.

    `dp.planned_rounds` = rounds, so that each hospital's agent spreads its budget over
    exactly the rounds the demo runs. Rounds start on request (no interval), need three of
    the four hospitals (so one may drop out), and every stage has a short deadline, so a
    dropout costs seconds, not the production default of minutes.
    """
    spec: dict[str, Any] = json.loads(json.dumps(example.spec))  # a deep copy
    spec["name"] = name
    if seed is not None:
        spec.setdefault("model", {})["init_seed"] = seed
    spec.setdefault("dp", {})["planned_rounds"] = rounds
    schedule = spec.setdefault("schedule", {})
    schedule["stage_timeout_s"] = stage_timeout_s
    schedule.pop("round_interval_s", None)
    n = len(example.hospitals)
    schedule["max_participants"] = max(n, 2)
    schedule["min_participants"] = max(2, min(schedule.get("min_participants", n - 1), n - 1))
    if local_epochs is not None:
        spec.setdefault("training", {})["local_epochs"] = local_epochs
    if not secure:
        spec.setdefault("secagg", {})["mode"] = "plain"
    return spec


# --- agent.toml -------------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("TOML here holds finite numbers only")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def to_toml(document: Mapping[str, Mapping[str, object]], header: str = "") -> str:
    """A TOML document of top-level tables (values may be inline tables and arrays)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, values in document.items():
        lines.append("")
        lines.append(f"[{_toml_key(section)}]")
        lines.extend(f"{_toml_key(key)} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines).lstrip("\n") + "\n"


def agent_config(
    hospital: Hospital,
    *,
    coordinator_url: str,
    state_dir: Path,
    epsilon: float,
    delta: float,
    accountant: str,
    seed: int | None,
    poll_interval_s: float,
    split_seed: int | None = None,
    data_root: Path | None = None,
    share_own_metrics: bool = False,
    personalisation: Mapping[str, object] | None = None,
    device: str = "cpu",
    unmasked: bool = False,
) -> str:
    """The agent.toml of one hospital: its data mapping, its own budget, its state folder.

    `seed` makes the agent's DP noise and sampling reproducible (`[testing]
    reproducible_dp_seed`: for demos and benchmarks only, refused by `fmtl agent run`, so
    such an agent runs under `python -m fmtl.demo.agent`); None leaves them to the OS's
    CSPRNG. `split_seed`, when given, replaces the mapping's seed of its train/validation
    split; `data_root`, when given, is what the mapping's relative data path resolves
    against (generated example data); `share_own_metrics` opts the hospital in to sending
    its own validation metrics in clear. `personalisation`, when given, is the hospital's
    `[personalisation]` section. `device` is where the agent trains (cpu, cuda or auto).
    `unmasked` opts the hospital in to the plain (unmasked) rounds of a benchmark
    federation (`[privacy] insecure_allow_unmasked_rounds`: loopback coordinators only).
    """
    data = dict(hospital.mapping)
    base = data_root if data_root is not None else hospital.mapping_file.parent
    for key in PATH_KEYS:
        if key in data:
            data[key] = str((base / str(data[key])).resolve())
    if split_seed is not None:
        data["split_seed"] = split_seed
    document: dict[str, Mapping[str, object]] = {
        "coordinator": {"url": coordinator_url},
        "state": {"dir": str(state_dir)},
        "data": data,
        "privacy": {
            "epsilon": epsilon,
            "delta": delta,
            "accountant": accountant,
            "share_own_metrics": share_own_metrics,
            **({"insecure_allow_unmasked_rounds": True} if unmasked else {}),
        },
        "training": {"device": device},
        **({"personalisation": personalisation} if personalisation else {}),
        "daemon": {
            "poll_interval_s": poll_interval_s,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 2.0,
            "shutdown_grace_s": 5.0,
        },
    }
    if seed is not None:
        document["testing"] = {"reproducible_dp_seed": seed}
    return to_toml(
        document,
        header=f"agent.toml of {hospital.name}, written by `fmtl demo`\n"
        "(see docs/agent.md for every setting)",
    )
