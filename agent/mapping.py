"""How an institution's table maps onto a federation's tasks: `DataMapping`.

The mapping is the only thing an institution writes about its data. It names the feature
columns (in the federation's feature order: every institution lists the same features, in
the same order, under its own column names), one label column per task it holds, and the
markers of a missing value. It lives in a TOML file (or a section of the agent's
configuration); a relative `path` is read against that file's folder.

A label is a column name, or a small table that derives the label from a column:

    [labels]
    disease = { column = "num", positive_above = 0 }          # binary: num > 0
    severity = "num"                                          # multiclass 0..n-1
    max_heart_rate = { column = "thalach", center = 140, scale = 25 }   # regression

A column used as a label is never also a feature (the model would read its own target).

Scales are public. Under DP-SGD, every number that multiplies a per-sample gradient must
not depend on the data, or one record would move every other record's clipped gradient
and the clipping bound would no longer bound one record's influence. So a federation
that trains with DP takes each feature's standardisation from `feature_scales` and each
regression label's from its `center` / `scale`, the same values at every institution:

    [feature_scales]                 # value -> (value - center) / scale
    age = { center = 54, scale = 9 }

`fmtl agent propose-scales` proposes values from the local data, for the federation to
review and agree on; once in the mapping they are public. Without DP (benchmark
baselines), an unset scale is standardised with local training statistics.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.errors import DataError


class LabelColumn(BaseModel):
    """A task's label: a column, optionally binarised or put on a fixed scale."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str = Field(min_length=1)
    positive_above: float | None = Field(
        default=None,
        description="Binary tasks: the label is 1 where the value exceeds this, else 0.",
    )
    center: float | None = Field(
        default=None,
        description="Regression tasks: the label is (value - center) / scale. A fixed, "
        "federation-wide scale, required under DP; unset (without DP only), the label is "
        "standardised with local statistics.",
    )
    scale: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _center_and_scale_together(self) -> LabelColumn:
        if (self.center is None) != (self.scale is None):
            raise ValueError(f"label column '{self.column}': set both center and scale, or neither")
        if self.positive_above is not None and self.center is not None:
            raise ValueError(
                f"label column '{self.column}': positive_above (binary) and center/scale "
                "(regression) exclude each other"
            )
        return self


class FeatureScale(BaseModel):
    """A feature's public standardisation: (value - center) / scale."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    center: float = Field(allow_inf_nan=False)
    scale: float = Field(gt=0.0, allow_inf_nan=False)


class DataMapping(BaseModel):
    """Where the local data is and which columns are features and labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="File format; unset: from the file suffix."
    )
    features: list[str] = Field(min_length=1)
    labels: dict[str, str | LabelColumn] = Field(min_length=1)
    feature_scales: dict[str, FeatureScale] = Field(
        default_factory=dict,
        description="Public, federation-wide standardisation of each feature (by column "
        "name). Required for every feature when the federation trains with DP.",
    )
    missing_values: list[str] = Field(default_factory=lambda: ["?", ""])
    missing_by_column: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Extra missing-value markers for single columns (e.g. '0' where a "
        "measurement of 0 means 'not measured').",
    )
    validation_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    split_seed: int = Field(default=0, ge=0)
    header: bool = True
    columns: list[str] | None = Field(
        default=None, description="Column names when the file has no header row."
    )

    @model_validator(mode="after")
    def _consistent(self) -> DataMapping:
        duplicated = sorted({f for f in self.features if self.features.count(f) > 1})
        if duplicated:
            raise ValueError(f"features lists {duplicated} more than once")
        targets = {name: self.label_column(name).column for name in self.labels}
        inputs = set(self.features)
        for task, column in targets.items():
            if column in inputs:
                raise ValueError(
                    f"column '{column}' is the label of task '{task}' and also a feature; "
                    "a target is never an input"
                )
        unknown = sorted(set(self.feature_scales) - inputs)
        if unknown:
            raise ValueError(f"feature_scales: {unknown} are not among the features")
        if not self.header and not self.columns:
            raise ValueError("header = false needs `columns` (the names of the file's columns)")
        if self.header and self.columns:
            raise ValueError("`columns` is only for files without a header row (header = false)")
        return self

    def label_column(self, task: str) -> LabelColumn:
        """The label definition of a task (a bare column name becomes a `LabelColumn`)."""
        label = self.labels[task]
        return LabelColumn(column=label) if isinstance(label, str) else label

    def missing_markers(self, column: str) -> frozenset[str]:
        return frozenset(self.missing_values) | frozenset(self.missing_by_column.get(column, ()))

    @property
    def file_format(self) -> Literal["csv", "parquet"]:
        if self.format is not None:
            return self.format
        suffix = self.path.suffix.lower()
        if suffix in {".parquet", ".pq"}:
            return "parquet"
        if suffix in {".csv", ".txt", ".data"}:
            return "csv"
        raise DataError(f"cannot tell the format of '{self.path}' from its suffix; set `format`")

    def resolve(self, base_dir: Path) -> DataMapping:
        """The same mapping with a relative `path` made absolute against `base_dir`."""
        if self.path.is_absolute():
            return self
        return self.model_copy(update={"path": (base_dir / self.path).resolve()})

    @classmethod
    def from_toml(cls, file: Path) -> DataMapping:
        """Read a mapping file; its relative `path` resolves against the file's folder."""
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise DataError(f"cannot read data mapping '{file}': {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise DataError(f"data mapping '{file}' is not valid TOML: {exc}") from None
        return cls.parse(raw, source=str(file)).resolve(file.parent)

    @classmethod
    def parse(cls, raw: object, *, source: str = "data mapping") -> DataMapping:
        """Validate a mapping, turning pydantic's errors into one `DataError` naming fields."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(mapping)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise DataError(f"{source}: {problems}") from None


__all__ = ["DataMapping", "FeatureScale", "LabelColumn"]
