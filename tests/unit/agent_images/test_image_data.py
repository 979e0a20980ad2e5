"""Image mappings: manifests of PNG/JPEG files or arrays, fixed preprocessing, streaming,
bad files named and never dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agent.config import parse_config
from agent.errors import DataError
from agent.image_data import StreamedImages, load_image_dataset
from agent.image_mapping import ImageMapping
from agent.sources import load_local_data, read_mapping_file
from agent.training import LocalTrainer
from federation.spec import FederationSpec

H, W = 6, 5


def image_spec(channels: int = 1, dp: bool = True) -> FederationSpec:
    return FederationSpec.model_validate(
        {
            "name": "tiny_images",
            "tasks": [
                {"name": "digit", "kind": "multiclass", "n_classes": 3},
                {"name": "odd", "kind": "binary"},
            ],
            "model": {
                "encoder": {
                    "kind": "conv",
                    "input_shape": [channels, H, W],
                    "channels": [4],
                    "residual_blocks": 1,
                    "groups": 2,
                }
            },
            "training": {"batch_size": 4, "learning_rate": 0.1},
            "dp": {"enabled": dp, "noise_multiplier": 1.0, "grad_sample_mode": "bk"},
        }
    )


def write_images(folder: Path, n: int = 12, *, kinds: tuple[str, ...] = ("png", "npy")) -> Path:
    """n images (a PNG of H x W, or an .npy of twice the size to be resized) + manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["file,digit,odd"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        pixels = rng.integers(0, 256, size=(H, W), dtype=np.uint8)
        if kind == "png":
            name = f"img{i}.png"
            Image.fromarray(pixels, mode="L").save(folder / name)
        elif kind == "jpg":
            name = f"img{i}.jpg"
            Image.fromarray(pixels, mode="L").save(folder / name, quality=95)
        else:
            name = f"img{i}.npy"
            np.save(folder / name, np.kron(pixels, np.ones((2, 2), dtype=np.uint8)))
        digit = "" if i == 3 else str(i % 3)  # one sample without a digit label
        rows.append(f"{name},{digit},{i % 2}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def mapping(manifest: Path, **extra: object) -> ImageMapping:
    return ImageMapping.model_validate(
        {
            "kind": "images",
            "manifest": manifest,
            "image_column": "file",
            "value_range": [0, 255],
            "mean": [0.5],
            "std": [0.25],
            "resample": "area",
            "labels": {"digit": "digit", "odd": "odd"},
            "validation_fraction": 0.25,
            **extra,
        }
    )


def test_images_load_on_the_declared_fixed_scale(tmp_path: Path) -> None:
    manifest = write_images(tmp_path / "data")
    data = load_image_dataset(mapping(manifest), image_spec())
    assert data.n_train + data.n_validation == 12
    assert data.sample_shape == (1, H, W)
    assert data.labelled_train["digit"] + data.labelled_validation["digit"] == 11
    # PNG 0 is pixels p: (p / 255 - 0.5) / 0.25, exactly, whatever the other images hold.
    pixels = np.asarray(Image.open(manifest.parent / "img0.png"), dtype=np.float32)
    expected = torch.from_numpy((pixels / 255.0 - 0.5) / 0.25)
    all_images = torch.cat([data.train.features, data.validation.features])  # type: ignore[list-item]
    assert any(torch.allclose(image[0], expected, atol=1e-6) for image in all_images)
    # The .npy images are twice the size, block-replicated: "area" resizing recovers them.
    npy = np.load(manifest.parent / "img1.npy")[::2, ::2].astype(np.float32)
    expected_npy = torch.from_numpy((npy / 255.0 - 0.5) / 0.25)
    assert any(torch.allclose(image[0], expected_npy, atol=1e-5) for image in all_images)


def test_streamed_images_equal_the_in_memory_ones_and_train(tmp_path: Path) -> None:
    manifest = write_images(tmp_path / "data", kinds=("png", "npy", "jpg"))
    spec = image_spec()
    memory = load_image_dataset(mapping(manifest, streaming="never"), spec)
    stream = load_image_dataset(mapping(manifest, streaming="always"), spec)
    assert isinstance(stream.train.features, StreamedImages)
    assert isinstance(memory.train.features, torch.Tensor)
    idx = torch.tensor([0, 2, 3])
    assert torch.equal(stream.train.features[idx], memory.train.features[idx])
    trainer = LocalTrainer(spec, stream, device="cpu", reproducible_dp_seed=0)
    vector = trainer.train(
        np.zeros(trainer.layout.length), trainer.plan(), progress=None
    ).local_vector
    assert np.all(np.isfinite(vector))
    assert set(trainer.evaluate(vector)) <= {"digit", "odd"}


def test_a_bad_file_is_named_in_one_line_and_not_dropped(tmp_path: Path) -> None:
    manifest = write_images(tmp_path / "data")
    (manifest.parent / "img4.png").write_bytes(b"not a png")
    (manifest.parent / "img5.npy").unlink()
    with pytest.raises(DataError) as caught:
        load_image_dataset(mapping(manifest), image_spec())
    message = str(caught.value)
    assert "img4.png" in message
    assert "2 of 12 files cannot be used" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mean": [0.5, 0.5], "std": [1.0, 1.0]}, "2 values for 1-channel images"),
        ({"labels": {"shade": "digit"}}, "task 'shade' is not in federation"),
        ({"image_column": "path"}, "unknown column 'path'"),
    ],
)
def test_bad_mappings_are_one_clear_line(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    manifest = write_images(tmp_path / "data")
    with pytest.raises(DataError, match=message):
        load_image_dataset(mapping(manifest, **change), image_spec())


def test_wrong_channel_count_names_the_file(tmp_path: Path) -> None:
    # (A grey PNG becomes RGB through Pillow; an array has the channels it has.)
    manifest = write_images(tmp_path / "data", kinds=("npy",))
    with pytest.raises(DataError, match=r"img0.npy': 1 channels, the encoder reads 3"):
        load_image_dataset(mapping(manifest, mean=[0.0], std=[1.0]), image_spec(channels=3))


def test_mapping_validation_refuses_data_dependent_gaps() -> None:
    with pytest.raises(ValueError, match="high must exceed low"):
        ImageMapping.model_validate(
            {"kind": "images", "manifest": "m.csv", "labels": {"a": "b"}, "value_range": [1, 1]}
        )
    with pytest.raises(ValueError, match="every value must be positive"):
        ImageMapping.model_validate(
            {"kind": "images", "manifest": "m.csv", "labels": {"a": "b"}, "std": [0.0]}
        )


def test_agent_toml_takes_an_image_mapping_inline_or_from_a_file(tmp_path: Path) -> None:
    manifest = write_images(tmp_path / "data")
    section = {
        "kind": "images",
        "manifest": "data/manifest.csv",
        "image_column": "file",
        "labels": {"digit": "digit"},
    }
    config = parse_config({"data": section, "privacy": {"epsilon": 1.0}}).resolved(tmp_path)
    assert isinstance(config.data, ImageMapping)
    assert config.data.manifest == manifest.resolve()
    file = tmp_path / "mapping.toml"
    file.write_text(
        'kind = "images"\nmanifest = "data/manifest.csv"\nimage_column = "file"\n'
        '[labels]\ndigit = "digit"\n'
    )
    from_file = read_mapping_file(file)
    assert isinstance(from_file, ImageMapping)
    assert from_file.manifest == manifest.resolve()
    data = load_local_data(from_file, image_spec())
    assert data.tasks_held == ("digit",)


def test_a_table_mapping_for_a_conv_federation_says_what_to_write(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("a,digit\n1,0\n")
    config = parse_config(
        {
            "data": {"path": str(table), "features": ["a"], "labels": {"digit": "digit"}},
            "privacy": {"epsilon": 1.0},
        }
    )
    with pytest.raises(DataError, match='kind = "images"'):
        load_local_data(config.data, image_spec())
