"""Local tabular data as tensors for multi-task training: `load_dataset`.

What happens to the institution's table, all of it locally (nothing here is ever sent):

1. the file (CSV or Parquet) is read as text, and each column's missing-value markers
   become "missing";
2. the rows are split into train and validation, deterministically from `split_seed`,
   stratified by the label of the first classification task held (so a rare class shows
   up in both parts);
3. every feature is standardised with its public scale from the mapping
   (`feature_scales`: (value - center) / scale); a missing value becomes 0 (the center)
   and a second input, its missing indicator, becomes 1. The encoder's input is therefore
   `2 x len(features)` wide: values first, then indicators, in the mapping's feature order;
4. labels: binary labels are 0/1 (or derived with `positive_above`), multiclass labels
   are integers 0..n-1, regression labels are put on the mapping's fixed scale. A sample
   may carry labels for only some tasks: each task has a boolean mask of the samples
   labelled for it.

Under DP every scale must come from the mapping (public, `agent.mapping`): a scale
computed from the local data would let one record move every other record's clipped
gradient. `load_dataset` refuses a DP federation's data otherwise, naming what is
missing; `Scaling` says where each scale came from (`fmtl agent check` prints it). Only
without DP (benchmark baselines) is an unset scale taken from local training statistics.
`propose_scales` computes values to propose for the mapping (`fmtl agent propose-scales`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import torch
from numpy.typing import NDArray

from agent.errors import DataError
from agent.mapping import DataMapping, FeatureScale, LabelColumn
from federation.spec import FederationSpec, MLPEncoderSpec, TaskKind, TaskSpec

if TYPE_CHECKING:
    from agent.image_data import StreamedImages

#: A feature whose local standard deviation is below this is only centred, not scaled
#: (a constant column would otherwise divide by zero).
MIN_STD: Final = 1e-8


@dataclass(frozen=True)
class LabelScale:
    """How a regression label was scaled: `label = (value - center) / scale`."""

    center: float
    scale: float
    local: bool  # True: standardised with local statistics; False: the mapping's fixed scale


@dataclass(frozen=True)
class Scaling:
    """Where each quantity that scales a per-sample gradient comes from."""

    #: Features (and regression-label tasks) standardised with the mapping's public scale.
    fixed_features: tuple[str, ...]
    fixed_labels: tuple[str, ...]
    #: ... and those standardised with local statistics (only ever without DP).
    local_features: tuple[str, ...] = ()
    local_labels: tuple[str, ...] = ()

    @property
    def data_independent(self) -> bool:
        return not self.local_features and not self.local_labels

    def describe(self) -> str:
        """One line for `fmtl agent check`."""
        fixed = (
            f"fixed in the data mapping (public) for {len(self.fixed_features)} features and "
            f"{len(self.fixed_labels)} regression labels; per-task loss weights fixed"
        )
        if self.data_independent:
            return f"scales: {fixed}"
        local = ", ".join((*self.local_features, *self.local_labels))
        return f"scales: {fixed}; from local data (no DP in this federation): {local}"


@dataclass(frozen=True)
class SplitTensors:
    """One split: features `(n, input_dim)` float32 (images: `(n, C, H, W)`, in memory or
    `StreamedImages` read from disk when indexed); per task held, labels and a mask.

    `labels[task]` is float32 for binary and regression tasks and int64 for multiclass;
    where `masks[task]` is False the label is a placeholder 0 that no loss ever reads.
    """

    features: torch.Tensor | StreamedImages
    labels: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def labelled(self, task: str) -> int:
        return int(self.masks[task].sum().item()) if task in self.masks else 0

    def to(self, device: torch.device | str) -> SplitTensors:
        return SplitTensors(
            self.features.to(device),
            {t: v.to(device) for t, v in self.labels.items()},
            {t: m.to(device) for t, m in self.masks.items()},
        )


@dataclass(frozen=True)
class LocalDataset:
    """An institution's data, ready for the federation's model."""

    train: SplitTensors
    validation: SplitTensors
    tasks_held: tuple[str, ...]
    feature_names: tuple[str, ...]
    label_scales: dict[str, LabelScale]
    #: Where the scales came from (None: not reported by this loader).
    scaling: Scaling | None = None

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_validation(self) -> int:
        return len(self.validation)

    @property
    def input_dim(self) -> int:
        return int(self.train.features.shape[1])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample's input (what the encoder reads)."""
        return tuple(int(d) for d in self.train.features.shape[1:])

    @property
    def labelled_train(self) -> dict[str, int]:
        return {task: self.train.labelled(task) for task in self.tasks_held}

    @property
    def labelled_validation(self) -> dict[str, int]:
        return {task: self.validation.labelled(task) for task in self.tasks_held}


def input_dim_for(n_features: int) -> int:
    """The encoder input width for a number of features: a value and an indicator each."""
    return 2 * n_features


def load_dataset(mapping: DataMapping, spec: FederationSpec) -> LocalDataset:
    """Read, check, split and standardise the local data for `spec`'s model."""
    _check_tasks(mapping, spec)
    encoder = spec.model.encoder
    if not isinstance(encoder, MLPEncoderSpec):
        raise DataError(
            f"federation '{spec.name}' has a '{encoder.kind}' encoder over inputs of shape "
            f"{encoder.sample_shape}; a table of feature columns feeds an 'mlp' encoder only "
            '(for images, write an image mapping: kind = "images")'
        )
    expected = encoder.input_dim
    if input_dim_for(len(mapping.features)) != expected:
        raise DataError(
            f"features: {len(mapping.features)} features give "
            f"{input_dim_for(len(mapping.features))} inputs (a value and a missing indicator "
            f"each), but federation '{spec.name}' has "
            f"model.encoder.input_dim = {expected} (it needs {expected // 2} features)"
        )
    table = _read_table(mapping)
    _check_columns(mapping, table)
    features = np.stack([_numeric(table, column, mapping) for column in mapping.features], axis=1)
    raw_labels = {
        task: _task_labels(table, mapping.label_column(task), spec.task(task), mapping)
        for task in mapping.labels
    }
    for task, values in raw_labels.items():
        if not np.any(np.isfinite(values)):
            column = mapping.label_column(task).column
            raise DataError(
                f"task '{task}': label column '{column}' has no labels in '{mapping.path.name}' "
                "(every value is missing); remove the task from `labels`"
            )
    held = tuple(t.name for t in spec.tasks if t.name in raw_labels)
    train_idx, val_idx = _split(len(table), raw_labels, held, spec, mapping)

    regression = [t for t in held if spec.task(t).kind is TaskKind.REGRESSION]
    _check_public_scales(mapping, spec, regression)
    mean, std = _feature_scales(mapping, features[train_idx])
    scales = {
        task: _label_scale(raw_labels[task][train_idx], mapping.label_column(task))
        for task in regression
    }
    scaling = Scaling(
        fixed_features=tuple(f for f in mapping.features if f in mapping.feature_scales),
        fixed_labels=tuple(t for t in regression if not scales[t].local),
        local_features=tuple(f for f in mapping.features if f not in mapping.feature_scales),
        local_labels=tuple(t for t in regression if scales[t].local),
    )

    def tensors(idx: NDArray[np.int64]) -> SplitTensors:
        x = features[idx]
        missing = ~np.isfinite(x)
        z = np.where(missing, 0.0, (x - mean) / std)
        inputs = np.concatenate([z, missing.astype(np.float64)], axis=1)
        labels: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        for task in held:
            y = raw_labels[task][idx]
            mask = np.isfinite(y)
            y = np.where(mask, y, 0.0)
            if task in scales:
                y = np.where(mask, (y - scales[task].center) / scales[task].scale, 0.0)
            kind = spec.task(task).kind
            dtype = torch.int64 if kind is TaskKind.MULTICLASS else torch.float32
            labels[task] = torch.as_tensor(y).to(dtype)
            masks[task] = torch.as_tensor(mask)
        return SplitTensors(torch.as_tensor(inputs, dtype=torch.float32), labels, masks)

    return LocalDataset(
        train=tensors(train_idx),
        validation=tensors(val_idx),
        tasks_held=held,
        feature_names=tuple(mapping.features),
        label_scales=scales,
        scaling=scaling,
    )


# -- reading ------------------------------------------------------------------------------


def _check_tasks(mapping: DataMapping, spec: FederationSpec) -> None:
    for task in mapping.labels:
        if task not in spec.task_names:
            raise DataError(
                f"labels: task '{task}' is not in federation '{spec.name}' "
                f"(its tasks: {', '.join(spec.task_names)})"
            )


def _read_table(mapping: DataMapping) -> pd.DataFrame:
    path = mapping.path
    if not path.is_file():
        raise DataError(f"path: data file '{path}' does not exist or is not a file")
    try:
        if mapping.file_format == "parquet":
            table = pd.read_parquet(path)
            table.columns = [str(c) for c in table.columns]
        else:
            table = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                header=0 if mapping.header else None,
                names=None if mapping.header else mapping.columns,
                skipinitialspace=True,
            )
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"path: cannot read '{path}' as {mapping.file_format}: {exc}") from None
    if len(table) == 0:
        raise DataError(f"path: '{path}' has no rows")
    return table


def _check_columns(mapping: DataMapping, table: pd.DataFrame) -> None:
    present = set(table.columns)
    wanted = [("features", c) for c in mapping.features]
    wanted += [(f"labels.{t}", mapping.label_column(t).column) for t in mapping.labels]
    wanted += [("missing_by_column", c) for c in mapping.missing_by_column]
    for setting, column in wanted:
        if column not in present:
            raise DataError(
                f"{setting}: unknown column '{column}' (the file has: "
                f"{', '.join(map(str, table.columns))})"
            )


def _numeric(table: pd.DataFrame, column: str, mapping: DataMapping) -> NDArray[np.float64]:
    """A column as float64 with NaN where missing; a non-numeric value is an error."""
    series = table[column]
    markers = mapping.missing_markers(column)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan).copy()
        numeric_markers = {_as_float(m) for m in markers} - {None}
        for marker in numeric_markers:
            values[values == marker] = np.nan
        values[~np.isfinite(values)] = np.nan
        return np.asarray(values, dtype=np.float64)
    text = series.astype("string").fillna("").str.strip()
    missing = text.isin(list(markers)) | series.isna().to_numpy()
    parsed = pd.to_numeric(text.where(~missing, None), errors="coerce")
    bad = (~missing) & parsed.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"column '{column}' is not numeric: row {row + 1} holds '{text.iloc[row]}' "
            f"(missing-value markers for it: {sorted(markers)})"
        )
    values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    values[~np.isfinite(values)] = np.nan
    return np.asarray(values, dtype=np.float64)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _task_labels(
    table: pd.DataFrame, label: LabelColumn, task: TaskSpec, mapping: DataMapping
) -> NDArray[np.float64]:
    """A task's labels as float64 (NaN: unlabelled), checked against the task's kind."""
    values = _numeric(table, label.column, mapping)
    seen = values[np.isfinite(values)]
    where = f"task '{task.name}' (column '{label.column}')"
    if task.kind is TaskKind.REGRESSION:
        if label.positive_above is not None:
            raise DataError(f"{where}: positive_above is for binary tasks, this is regression")
        return values
    if label.center is not None:
        raise DataError(f"{where}: center/scale are for regression tasks, this is {task.kind}")
    if task.kind is TaskKind.BINARY:
        if label.positive_above is not None:
            return np.where(np.isfinite(values), (values > label.positive_above) * 1.0, np.nan)
        if not np.all(np.isin(seen, (0.0, 1.0))):
            odd = sorted(set(seen.tolist()) - {0.0, 1.0})[:5]
            raise DataError(
                f"{where}: binary labels must be 0 or 1, found {odd}; "
                "set positive_above to derive them"
            )
        return values
    if label.positive_above is not None:
        raise DataError(f"{where}: positive_above is for binary tasks, this is multiclass")
    assert task.n_classes is not None
    ok = (seen == np.round(seen)) & (seen >= 0) & (seen < task.n_classes)
    if not np.all(ok):
        odd = sorted(set(seen[~ok].tolist()))[:5]
        raise DataError(
            f"{where}: multiclass labels must be integers 0..{task.n_classes - 1}, found {odd}"
        )
    return values


# -- scales -------------------------------------------------------------------------------


def _check_public_scales(mapping: DataMapping, spec: FederationSpec, regression: list[str]) -> None:
    """Under DP every feature and regression label needs its public scale in the mapping."""
    if not spec.dp.enabled:
        return
    features = [f for f in mapping.features if f not in mapping.feature_scales]
    if features:
        raise DataError(
            f"feature_scales: no public scale for {', '.join(features)}; federation "
            f"'{spec.name}' trains with DP, so every feature's center and scale must be fixed "
            "in the data mapping, the same at every institution (a scale computed from the "
            "local data would let one record move every other record's clipped gradient); "
            "`fmtl agent propose-scales` proposes values to agree on"
        )
    require_public_label_scales(mapping.label_column, spec, regression)


def require_public_label_scales(
    label_column: Callable[[str], LabelColumn], spec: FederationSpec, regression: list[str]
) -> None:
    """Under DP every regression label needs a public center and scale in its mapping."""
    labels = [t for t in regression if label_column(t).center is None]
    if spec.dp.enabled and labels:
        raise DataError(
            f"labels: regression task(s) {', '.join(labels)} have no center/scale; federation "
            f"'{spec.name}' trains with DP, so set a public center and scale for each "
            "(`fmtl agent propose-scales` proposes values)"
        )


def _feature_scales(
    mapping: DataMapping, train: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each feature's (center, scale): the mapping's, else (without DP) local statistics."""
    mean, std = _feature_stats(train)
    for i, name in enumerate(mapping.features):
        fixed = mapping.feature_scales.get(name)
        if fixed is not None:
            mean[i], std[i] = fixed.center, fixed.scale
    return mean, std


@dataclass(frozen=True)
class ProposedScales:
    """Scales computed from local data, to propose for the mapping (never used as such)."""

    rows: int
    features: dict[str, FeatureScale]
    labels: dict[str, FeatureScale]


def _round_significant(value: float, digits: int = 2) -> float:
    if value == 0 or not np.isfinite(value):
        return 0.0
    return float(f"{value:.{digits}g}")


def propose_scales(mapping: DataMapping, spec: FederationSpec) -> ProposedScales:
    """Mean and standard deviation of every feature and regression label over the whole
    local file, rounded to 2 significant digits: values to *propose* for the mapping's
    public scales. They describe this institution's data; review them before sharing."""
    _check_tasks(mapping, spec)
    table = _read_table(mapping)
    _check_columns(mapping, table)

    def proposal(values: NDArray[np.float64]) -> FeatureScale:
        seen = values[np.isfinite(values)]
        if len(seen) == 0:
            return FeatureScale(center=0.0, scale=1.0)
        std = float(seen.std())
        return FeatureScale(
            center=_round_significant(float(seen.mean())),
            scale=_round_significant(std) if std >= MIN_STD else 1.0,
        )

    features = {c: proposal(_numeric(table, c, mapping)) for c in mapping.features}
    labels = {
        task: proposal(_numeric(table, mapping.label_column(task).column, mapping))
        for task in mapping.labels
        if task in spec.task_names and spec.task(task).kind is TaskKind.REGRESSION
    }
    return ProposedScales(rows=len(table), features=features, labels=labels)


# -- split and statistics -----------------------------------------------------------------


def _split(
    n: int,
    labels: dict[str, NDArray[np.float64]],
    held: tuple[str, ...],
    spec: FederationSpec,
    mapping: DataMapping,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Deterministic split, stratified by the first classification task held."""
    strata = np.zeros(n, dtype=np.int64)
    for task in held:
        if spec.task(task).kind is not TaskKind.REGRESSION:
            y = labels[task]
            strata = np.where(np.isfinite(y), np.nan_to_num(y, nan=0.0).astype(np.int64), -1)
            break
    rng = np.random.default_rng(mapping.split_seed)
    validation: list[NDArray[np.int64]] = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        members = members[rng.permutation(len(members))]
        validation.append(members[: round(mapping.validation_fraction * len(members))])
    val_idx = np.sort(np.concatenate(validation)).astype(np.int64)
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    train_idx = np.flatnonzero(train_mask).astype(np.int64)
    if len(train_idx) == 0:
        raise DataError(
            f"validation_fraction: {mapping.validation_fraction} leaves no training rows out of {n}"
        )
    return train_idx, val_idx


def _feature_stats(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-feature mean and std over observed training values (0 and 1 where none)."""
    observed = np.isfinite(x)
    count = observed.sum(axis=0)
    filled = np.where(observed, x, 0.0)
    mean = np.divide(filled.sum(axis=0), count, out=np.zeros(x.shape[1]), where=count > 0)
    sq = np.where(observed, (x - mean) ** 2, 0.0).sum(axis=0)
    var = np.divide(sq, count, out=np.ones(x.shape[1]), where=count > 0)
    std = np.sqrt(var)
    return mean, np.where(std < MIN_STD, 1.0, std)


def _label_scale(y: NDArray[np.float64], label: LabelColumn) -> LabelScale:
    if label.center is not None and label.scale is not None:
        return LabelScale(label.center, label.scale, local=False)
    seen = y[np.isfinite(y)]
    if len(seen) == 0:
        return LabelScale(0.0, 1.0, local=True)
    std = float(seen.std())
    return LabelScale(float(seen.mean()), std if std >= MIN_STD else 1.0, local=True)


__all__ = [
    "LabelScale",
    "LocalDataset",
    "ProposedScales",
    "Scaling",
    "SplitTensors",
    "input_dim_for",
    "load_dataset",
    "propose_scales",
    "require_public_label_scales",
]
