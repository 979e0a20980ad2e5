"""The institution's data, whatever its kind: `LocalDataMapping` and `load_local_data`.

The `[data]` section of agent.toml is a table mapping (`agent.mapping.DataMapping`: CSV or
Parquet columns, for an `mlp` encoder) or, with `kind = "images"`, an image mapping
(`agent.image_mapping.ImageMapping`: a manifest of image files, for a `conv` encoder).
A section without `kind` is a table, so every existing configuration keeps working.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Discriminator, Tag, TypeAdapter, ValidationError

from agent.data import LocalDataset, load_dataset
from agent.errors import DataError
from agent.image_mapping import ImageMapping
from agent.mapping import DataMapping
from federation.spec import FederationSpec

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.enrollment import Enrollment


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "images" if value.get("kind") == "images" else "table"
    return "images" if isinstance(value, ImageMapping) else "table"


LocalDataMapping = Annotated[
    Annotated[DataMapping, Tag("table")] | Annotated[ImageMapping, Tag("images")],
    Discriminator(_kind),
]


def read_mapping_file(file: Path) -> DataMapping | ImageMapping:
    """A mapping TOML file of either kind; relative paths resolve against its folder."""
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read data mapping '{file}': {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"data mapping '{file}' is not valid TOML: {exc}") from None
    if _kind(raw) == "table":
        return DataMapping.parse(raw, source=str(file)).resolve(file.parent)
    try:
        mapping = TypeAdapter(ImageMapping).validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(mapping)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise DataError(f"{file}: {problems}") from None
    return mapping.resolve(file.parent)


def load_local_data(mapping: DataMapping | ImageMapping, spec: FederationSpec) -> LocalDataset:
    """Load, check and split the local data for `spec`'s model (`DataError` on bad input)."""
    if isinstance(mapping, ImageMapping):
        from agent.image_data import load_image_dataset

        return load_image_dataset(mapping, spec)
    return load_dataset(mapping, spec)


def describe(dataset: LocalDataset, spec: FederationSpec) -> list[str]:
    """What `fmtl agent check` reports: the inputs' shape and, per task held, how many
    samples are labelled and (classification) how many of each class."""
    import torch

    from agent.image_data import StreamedImages

    shape = " x ".join(str(d) for d in dataset.sample_shape)
    features = dataset.train.features
    where = "streamed from disk" if isinstance(features, StreamedImages) else "in memory"
    kind = "images" if len(dataset.sample_shape) == 3 else "values per row"
    lines = [f"inputs: {kind} {shape} ({where})"]
    for task in dataset.tasks_held:
        spec_task = spec.task(task)
        train, validation = dataset.train.labelled(task), dataset.validation.labelled(task)
        line = f"{task} ({spec_task.kind}): {train} training / {validation} validation labelled"
        if spec_task.output_dim > 1 or spec_task.kind.value == "binary":
            classes = max(2, spec_task.output_dim)
            labels = torch.cat(
                [
                    split.labels[task][split.masks[task]].to(torch.int64)
                    for split in (dataset.train, dataset.validation)
                ]
            )
            counts = torch.bincount(labels.cpu(), minlength=classes).tolist()
            absent = [str(c) for c, n in enumerate(counts) if n == 0]
            line += "; classes " + " ".join(f"{c}:{n}" for c, n in enumerate(counts))
            if absent:
                line += f" (no sample of {', '.join(absent)})"
        lines.append(line)
    return lines


def data_file(mapping: DataMapping | ImageMapping) -> Path:
    """The file the mapping reads first: the table, or the image manifest."""
    return mapping.manifest if isinstance(mapping, ImageMapping) else mapping.path


# -- checks the CLI and the daemon run before a round ------------------------------------------


def _data_error(config: AgentConfig, error: DataError) -> DataError:
    """A data error prefixed with the file and the [data] section it is about."""
    return DataError(f"{config.source}: data.{error}")


def check_local_data(config: AgentConfig, enrollment: Enrollment) -> LocalDataset:
    """Load the data as the daemon will, against the enrolled federation's spec."""
    profile = enrollment.profile
    not_held = [task for task in config.data.labels if task not in profile.tasks_held]
    if not_held:
        raise DataError(
            f"{config.source}: data.labels: task(s) {', '.join(not_held)} are not among the "
            f"tasks the coordinator lists for '{profile.institution}' "
            f"({', '.join(profile.tasks_held)}); remove them or ask the admin"
        )
    try:
        return load_local_data(config.data, profile.spec)
    except DataError as exc:
        raise _data_error(config, exc) from None


def precheck_columns(config: AgentConfig) -> None:
    """Before spending a token: the data file is readable and has every mapped column."""
    from agent.data import _check_columns, _read_table  # the loader's own checks

    table = config.data.table_mapping() if isinstance(config.data, ImageMapping) else config.data
    try:
        _check_columns(table, _read_table(table))
    except DataError as exc:
        raise _data_error(config, exc) from None


__all__ = [
    "LocalDataMapping",
    "check_local_data",
    "data_file",
    "describe",
    "load_local_data",
    "precheck_columns",
    "read_mapping_file",
]
