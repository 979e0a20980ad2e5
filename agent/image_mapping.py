"""How an institution's images map onto a federation's tasks: `ImageMapping`.

An image data set is a **manifest** (CSV or Parquet) with one row per sample: the path of
its image file (PNG or JPEG, read with Pillow; or a NumPy `.npy` / `.npz` array) and one
column per task label, with the same label syntax as a table (`agent.mapping`):

    [data]
    kind = "images"
    manifest = "images/manifest.csv"      # relative paths inside it: against its folder
    image_column = "file"
    value_range = [0, 255]                # raw pixel values of the files (8-bit)
    mean = [0.5]                          # per channel, after scaling to [0, 1]
    std = [0.25]
    resample = "bilinear"                 # only when a file is not the encoder's size
    [data.labels]
    digit = "label"
    odd = { column = "label", positive_above = ... }   # or a column of its own

Every preprocessing parameter is **fixed and declared** here, never computed from the
data: the pixel range, the per-channel mean and standard deviation, the resampling
filter, and the size (the encoder's `input_shape` in the federation spec). A scale
computed from local pixels would make one sample's input depend on all the others and
void the per-sample sensitivity bound of DP-SGD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.mapping import DataMapping, LabelColumn


class ImageMapping(BaseModel):
    """Where the manifest is, how to read and normalise its images, and its labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["images"]
    manifest: Path = Field(description="CSV or Parquet file: one row per image.")
    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="The manifest's format; unset: from its suffix."
    )
    image_column: str = Field(
        default="path", min_length=1, description="The manifest column holding file paths."
    )
    array_key: str | None = Field(
        default=None,
        description="For .npz files: the array to read (unset: the archive's only array).",
    )
    array_layout: Literal["hwc", "chw"] = Field(
        default="hwc",
        description="Axis order of 3-D arrays in .npy/.npz files (2-D arrays are H x W).",
    )
    value_range: tuple[float, float] = Field(
        default=(0.0, 255.0),
        description="Raw pixel values [low, high] of the files; scaled to [0, 1] and clipped.",
    )
    mean: tuple[float, ...] = Field(
        default=(0.0,), min_length=1, description="Per-channel mean subtracted after scaling."
    )
    std: tuple[float, ...] = Field(
        default=(1.0,), min_length=1, description="Per-channel divisor after the mean."
    )
    resample: Literal["nearest", "bilinear", "bicubic", "area"] = Field(
        default="bilinear",
        description="Filter used when a file's size differs from the encoder's input size.",
    )
    labels: dict[str, str | LabelColumn] = Field(min_length=1)
    missing_values: list[str] = Field(default_factory=lambda: ["?", ""])
    validation_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    split_seed: int = Field(default=0, ge=0)
    streaming: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="'auto': keep the decoded images in memory when they fit in "
        "`memory_limit_mb`, else read each batch's files from disk.",
    )
    memory_limit_mb: float = Field(default=1024.0, gt=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> ImageMapping:
        low, high = self.value_range
        if not high > low:
            raise ValueError(f"value_range [{low}, {high}]: high must exceed low")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"std {list(self.std)}: every value must be positive")
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values and std {len(self.std)}; give one per channel"
            )
        for task in self.labels:
            if self.label_column(task).column == self.image_column:
                raise ValueError(f"labels.{task}: '{self.image_column}' is the image column")
        return self

    def label_column(self, task: str) -> LabelColumn:
        label = self.labels[task]
        return LabelColumn(column=label) if isinstance(label, str) else label

    def resolve(self, base_dir: Path) -> ImageMapping:
        """The same mapping with a relative `manifest` made absolute against `base_dir`."""
        if self.manifest.is_absolute():
            return self
        return self.model_copy(update={"manifest": (base_dir / self.manifest).resolve()})

    def table_mapping(self) -> DataMapping:
        """The manifest as a table mapping: its labels read exactly as a table's are."""
        return DataMapping(
            path=self.manifest,
            format=self.format,
            features=[self.image_column],
            labels=self.labels,
            missing_values=self.missing_values,
            validation_fraction=self.validation_fraction,
            split_seed=self.split_seed,
        )


__all__ = ["ImageMapping"]
