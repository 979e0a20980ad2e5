"""Local image data for multi-task training: `load_image_dataset`.

What happens to the institution's images, all of it locally:

1. the manifest (CSV or Parquet) is read; each row is one sample: an image file and its
   labels (read exactly as a table's labels are, `agent.data`);
2. **every** file is decoded once and checked: it exists, decodes, and has the channels
   the encoder reads. A file that fails stops the load with one line naming it (and how
   many others failed): a sample is never dropped silently, since N, the number of
   samples, sets the sampling rate q = B / N that the privacy accounting relies on;
3. each image is put on the federation's fixed scale: pixel values are mapped from the
   mapping's declared `value_range` to [0, 1] (and clipped), resized to the encoder's
   height and width with the declared filter when the file differs, and normalised per
   channel with the declared `mean` and `std`. Nothing is estimated from the data;
4. the rows are split into train and validation (`split_seed`, stratified as for tables).

Images are kept in memory, decoded, when they fit in `memory_limit_mb`; otherwise
(`streaming`) each Poisson batch reads its own files from disk: the sampling itself is
unchanged (every sample joins each batch independently with probability q), only where
the pixels come from differs, so a data set larger than memory trains under the same
guarantee. A file that goes bad between the check and a batch stops training with its
name (`DataError`), it is not skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F  # noqa: N812 (PyTorch's own convention)

from agent.data import (
    LocalDataset,
    Scaling,
    SplitTensors,
    _check_columns,
    _label_scale,
    _read_table,
    _split,
    _task_labels,
    require_public_label_scales,
)
from agent.errors import DataError
from agent.image_mapping import ImageMapping
from federation.spec import ConvEncoderSpec, FederationSpec, TaskKind

ARRAY_SUFFIXES: Final = frozenset({".npy", ".npz"})
#: Pillow modes for the channel counts a PNG/JPEG file can give.
PIL_MODES: Final = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class ImageReader:
    """Decodes one file into a (C, H, W) float32 tensor on the federation's fixed scale."""

    mapping: ImageMapping
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        channels = self.shape[0]
        for name, values in (("mean", self.mapping.mean), ("std", self.mapping.std)):
            if len(values) not in (1, channels):
                raise DataError(
                    f"{name}: {len(values)} values for {channels}-channel images; give one, "
                    f"or one per channel"
                )

    def read(self, path: Path) -> torch.Tensor:
        """The image at `path`, scaled, resized and normalised; `DataError` naming it."""
        try:
            raw = self._decode(path)
        except DataError:
            raise
        except Exception as exc:  # Pillow and NumPy raise many kinds for a damaged file
            raise DataError(f"image '{path}': cannot be read ({exc})") from None
        return self._normalise(raw, path)

    def _decode(self, path: Path) -> NDArray[np.float32]:
        """The file's pixels as (C, h, w) float32, in the file's own value range."""
        channels = self.shape[0]
        suffix = path.suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            array = self._array(path)
            if array.ndim == 2:
                array = array[None]
            elif array.ndim == 3 and self.mapping.array_layout == "hwc":
                array = np.moveaxis(array, -1, 0)
            elif array.ndim != 3:
                raise DataError(f"image '{path}': an array of shape {array.shape} is not an image")
        else:
            from PIL import Image

            mode = PIL_MODES.get(channels)
            if mode is None:
                raise DataError(
                    f"image '{path}': {channels}-channel images come from .npy/.npz arrays only"
                )
            with Image.open(path) as image:
                array = np.asarray(image.convert(mode))
            array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        if array.shape[0] != channels:
            raise DataError(
                f"image '{path}': {array.shape[0]} channels, the encoder reads {channels}"
            )
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(
            array.dtype, np.complexfloating
        ):
            raise DataError(f"image '{path}': values of type {array.dtype} are not pixels")
        values = array.astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise DataError(f"image '{path}': holds NaN or infinite values")
        return values

    def _array(self, path: Path) -> NDArray[np.generic]:
        if path.suffix.lower() == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        with np.load(path, allow_pickle=False) as archive:
            key = self.mapping.array_key
            if key is None:
                if len(archive.files) != 1:
                    raise DataError(
                        f"image '{path}': the archive holds {len(archive.files)} arrays "
                        f"({', '.join(archive.files[:5])}); set array_key"
                    )
                key = archive.files[0]
            if key not in archive.files:
                raise DataError(f"image '{path}': no array '{key}' in the archive")
            return np.asarray(archive[key])

    def _normalise(self, raw: NDArray[np.float32], path: Path) -> torch.Tensor:
        low, high = self.mapping.value_range
        x = torch.from_numpy(raw).sub_(low).div_(high - low).clamp_(0.0, 1.0)
        _, height, width = self.shape
        if x.shape[1:] != (height, width):
            x = resize(x, (height, width), self.mapping.resample)
        mean = torch.tensor(self.mapping.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.mapping.std, dtype=torch.float32).view(-1, 1, 1)
        return (x - mean) / std


def resize(image: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """A (C, h, w) image resized to `size` with a fixed filter (antialiased when shrinking
    with bilinear or bicubic, as Pillow does)."""
    batch = image[None]
    if method == "area":
        return F.adaptive_avg_pool2d(batch, size)[0]
    if method == "nearest":
        return F.interpolate(batch, size=size, mode="nearest")[0]
    return F.interpolate(batch, size=size, mode=method, align_corners=False, antialias=True)[
        0
    ].clamp_(0.0, 1.0)


class StreamedImages:
    """The images of one split, read from disk when indexed: a stand-in for the
    (n, C, H, W) tensor of an in-memory split (`shape`, `x[idx]`, `.to(device)`)."""

    def __init__(
        self,
        reader: ImageReader,
        paths: Sequence[Path],
        device: torch.device | str = "cpu",
    ) -> None:
        self.reader = reader
        self.paths = tuple(paths)
        self.device = torch.device(device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), *self.reader.shape))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        rows = idx.reshape(-1).tolist()
        if not rows:
            return torch.zeros((0, *self.reader.shape), device=self.device)
        batch = torch.stack([self.reader.read(self.paths[int(i)]) for i in rows])
        return batch.to(self.device)

    def to(self, device: torch.device | str) -> StreamedImages:
        return StreamedImages(self.reader, self.paths, device)


def load_image_dataset(mapping: ImageMapping, spec: FederationSpec) -> LocalDataset:
    """Read and check the manifest and every image, split, and hold or stream them."""
    encoder = spec.model.encoder
    if not isinstance(encoder, ConvEncoderSpec):
        raise DataError(
            f"federation '{spec.name}' has a '{encoder.kind}' encoder; an image mapping feeds "
            "a 'conv' encoder"
        )
    for task in mapping.labels:
        if task not in spec.task_names:
            raise DataError(
                f"labels: task '{task}' is not in federation '{spec.name}' "
                f"(its tasks: {', '.join(spec.task_names)})"
            )
    reader = ImageReader(mapping, encoder.input_shape)
    table_mapping = mapping.table_mapping()
    table = _read_table(table_mapping)
    _check_columns(table_mapping, table)
    paths = _paths(table[mapping.image_column].tolist(), mapping.manifest)
    raw_labels = {
        task: _task_labels(table, mapping.label_column(task), spec.task(task), table_mapping)
        for task in mapping.labels
    }
    for task, values in raw_labels.items():
        if not np.any(np.isfinite(values)):
            raise DataError(
                f"task '{task}': label column '{mapping.label_column(task).column}' has no "
                f"labels in '{mapping.manifest.name}' (every value is missing)"
            )
    held = tuple(t.name for t in spec.tasks if t.name in raw_labels)
    train_idx, val_idx = _split(len(table), raw_labels, held, spec, table_mapping)
    regression = [t for t in held if spec.task(t).kind is TaskKind.REGRESSION]
    require_public_label_scales(mapping.label_column, spec, regression)
    scales = {
        task: _label_scale(raw_labels[task][train_idx], mapping.label_column(task))
        for task in regression
    }
    in_memory = _fits_in_memory(mapping, len(paths), encoder.input_shape)
    images = _read_all(reader, paths, keep=in_memory)

    def split(idx: NDArray[np.int64]) -> SplitTensors:
        features: torch.Tensor | StreamedImages
        if images is not None:
            features = images[torch.as_tensor(idx)]
        else:
            features = StreamedImages(reader, [paths[i] for i in idx])
        labels: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        for task in held:
            y = raw_labels[task][idx]
            mask = np.isfinite(y)
            y = np.where(mask, y, 0.0)
            if task in scales:
                y = np.where(mask, (y - scales[task].center) / scales[task].scale, 0.0)
            dtype = torch.int64 if spec.task(task).kind is TaskKind.MULTICLASS else torch.float32
            labels[task] = torch.as_tensor(y).to(dtype)
            masks[task] = torch.as_tensor(mask)
        return SplitTensors(features, labels, masks)

    return LocalDataset(
        train=split(train_idx),
        validation=split(val_idx),
        tasks_held=held,
        feature_names=(mapping.image_column,),
        label_scales=scales,
        # Pixels: the mapping's declared range, mean and std (public, never local).
        scaling=Scaling(
            fixed_features=(mapping.image_column,),
            fixed_labels=tuple(t for t in regression if not scales[t].local),
            local_labels=tuple(t for t in regression if scales[t].local),
        ),
    )


def _paths(values: list[object], manifest: Path) -> list[Path]:
    """Each row's file, relative paths against the manifest's folder; an empty cell is an
    error naming its row."""
    out = []
    for row, value in enumerate(values):
        text = "" if value is None else str(value).strip()
        if not text or text.lower() == "nan":
            raise DataError(f"manifest '{manifest.name}': row {row + 1} has no image path")
        path = Path(text)
        out.append(path if path.is_absolute() else manifest.parent / path)
    return out


def _fits_in_memory(mapping: ImageMapping, n: int, shape: tuple[int, int, int]) -> bool:
    if mapping.streaming != "auto":
        return mapping.streaming == "never"
    size_mb = n * int(np.prod(shape)) * 4 / 2**20
    return size_mb <= mapping.memory_limit_mb


def _read_all(reader: ImageReader, paths: list[Path], *, keep: bool) -> torch.Tensor | None:
    """Decode every file once (the check); the stacked images when `keep`."""
    kept: list[torch.Tensor] = []
    bad: list[str] = []
    for path in paths:
        try:
            image = reader.read(path)
        except DataError as exc:
            bad.append(str(exc))
            continue
        if keep:
            kept.append(image)
    if bad:
        raise DataError(
            f"{bad[0]}; {len(bad)} of {len(paths)} files cannot be used: fix them or "
            "remove their rows from the manifest (every row counts in N, the number of "
            "samples the privacy accounting uses)"
        )
    return torch.stack(kept) if keep else None


__all__ = ["ImageReader", "StreamedImages", "load_image_dataset", "resize"]
