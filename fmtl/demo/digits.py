"""The images example's data: scikit-learn's 8x8 digits as five institutions' image folders.

scikit-learn ships the test part of the UCI "Optical Recognition of Handwritten Digits"
data set (Alpaydin and Kaynak 1998; CC BY 4.0) inside its wheel: 1,797 images of 8 x 8
pixels with values 0..16 (`sklearn.datasets.load_digits`, no download). `materialise`
writes them as the example needs them, deterministically from a seed:

- a balanced **test** set (`TEST_PER_CLASS` of each digit) that no institution holds,
  for the benchmarks' held-out accuracy;
- five institutions with **skewed label distributions**: institution k holds most of the
  images of its two "major" digits (2k, 2k + 1; `MAJOR_SHARE` of each) and an even share
  of the rest of every other digit;
- **overlapping task subsets**: each manifest has label columns only for the tasks that
  institution recorded (`TASKS_HELD`): the digit itself, its parity (`odd`), and whether
  it is 5 or more (`large`). One institution recorded only the two coarse labels;
- **two file formats**: three institutions store 8-bit PNG files (pixel = value x 255 / 16),
  two store `.npy` arrays of the raw 0..16 values; each mapping declares its own
  `value_range`, so after scaling every institution feeds the encoder the same numbers.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

INSTITUTIONS: Final = ("north", "south", "east", "west", "central")
TASKS_HELD: Final[dict[str, tuple[str, ...]]] = {
    "north": ("digit", "odd"),
    "south": ("digit", "large"),
    "east": ("digit",),
    "west": ("odd", "large"),
    "central": ("digit", "odd", "large"),
}
PNG_INSTITUTIONS: Final = frozenset({"north", "south", "east"})
TEST_PER_CLASS: Final = 30
#: Share of each digit's (non-test) images that goes to the institution it is major at.
MAJOR_SHARE: Final = 0.9
#: The digits' raw pixel range (scikit-learn's copy counts on-pixels in 4 x 4 blocks).
RAW_MAX: Final = 16


def load_digits() -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """The 1,797 images (n, 8, 8), values 0..16, and their digits, from scikit-learn."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise RuntimeError(
            "the images example needs scikit-learn (pip install 'fmtl[all]')"
        ) from exc
    bunch = sklearn_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)
    return images, np.asarray(bunch.target, dtype=np.int64)


def assign(labels: NDArray[np.int64], seed: int = 0) -> dict[str, NDArray[np.int64]]:
    """Indices of the test set and of each institution's images (module docstring)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {name: [] for name in ("test", *INSTITUTIONS)}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        parts["test"] += members[:TEST_PER_CLASS].tolist()
        rest = members[TEST_PER_CLASS:]
        major = INSTITUTIONS[digit // 2]
        cut = round(MAJOR_SHARE * len(rest))
        parts[major] += rest[:cut].tolist()
        others = [name for name in INSTITUTIONS if name != major]
        for i, index in enumerate(rest[cut:].tolist()):
            parts[others[i % len(others)]].append(index)
    return {name: np.sort(np.asarray(idx, dtype=np.int64)) for name, idx in parts.items()}


def task_labels(digit: int) -> dict[str, int]:
    return {"digit": digit, "odd": digit % 2, "large": int(digit >= 5)}


def materialise(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write every part's files and manifest under `folder`; the manifests by part.

    Idempotent: a part whose manifest exists is left as it is.
    """
    images, labels = load_digits()
    manifests: dict[str, Path] = {}
    for part, indices in assign(labels, seed).items():
        root = folder / part
        manifest = root / "manifest.csv"
        manifests[part] = manifest
        if manifest.exists():
            continue
        root.mkdir(parents=True, exist_ok=True)
        png = part in PNG_INSTITUTIONS
        tasks = TASKS_HELD.get(part, ("digit", "odd", "large"))
        rows = []
        for index in indices.tolist():
            name = f"{index:04d}.png" if png else f"{index:04d}.npy"
            if png:
                _write_png(root / name, images[index])
            else:
                np.save(root / name, images[index])
            derived = task_labels(int(labels[index]))
            rows.append({"file": name, **{task: derived[task] for task in tasks}})
        partial = manifest.with_suffix(".tmp")
        with partial.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=["file", *tasks])
            writer.writeheader()
            writer.writerows(rows)
        partial.replace(manifest)  # the manifest appears last: a complete part
    return manifests


def _write_png(path: Path, raw: NDArray[np.uint8]) -> None:
    from PIL import Image

    pixels = np.rint(raw.astype(np.float64) * 255.0 / RAW_MAX).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


__all__ = ["INSTITUTIONS", "TASKS_HELD", "assign", "load_digits", "materialise", "task_labels"]
