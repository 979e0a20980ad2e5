"""Local data loading: mapping checks, partial labels, local standardisation, split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agent.data import load_dataset
from agent.errors import DataError
from agent.mapping import DataMapping
from federation.spec import FederationSpec
from tests.unit.agent_training.conftest import HOSPITALS, small_spec

CSV = """a,b,flag,grade,level
1.0,10,1,0,5.0
2.0,?,0,2,
3.0,30,,1,7.0
4.0,40,1,,9.0
5.0,50,0,0,
6.0,60,1,1,4.0
7.0,,0,2,3.0
8.0,80,1,0,2.0
9.0,90,0,1,1.0
10.0,100,1,2,0.0
"""


def write(tmp_path: Path, text: str = CSV, name: str = "local.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def mapping(path: Path, **overrides: object) -> DataMapping:
    raw: dict[str, object] = {
        "path": path,
        "features": ["a", "b"],
        "labels": {"flag": "flag", "grade": "grade", "level": "level"},
        "validation_fraction": 0.2,
    }
    raw.update(overrides)
    return DataMapping.parse(raw)


@pytest.mark.parametrize("hospital", HOSPITALS)
def test_every_hospital_of_the_example_loads(
    heart_disease_dir: Path, heart_spec: FederationSpec, hospital: str
) -> None:
    m = DataMapping.from_toml(heart_disease_dir / f"mapping_{hospital}.toml")
    data = load_dataset(m, heart_spec)
    assert data.input_dim == heart_spec.model.encoder.input_dim == 22
    assert data.n_train + data.n_validation == len(pd.read_csv(m.path))
    assert "disease" in data.tasks_held
    assert ("severity" in data.tasks_held) == (hospital != "hungarian")
    # Targets are never inputs.
    assert not {"num", "thalach", "exang"} & set(data.feature_names)


def test_missing_labels_are_masked_and_features_carry_an_indicator(tmp_path: Path) -> None:
    data = load_dataset(mapping(write(tmp_path), validation_fraction=0.0), small_spec())
    assert (data.n_train, data.n_validation) == (10, 0)
    assert data.labelled_train == {"flag": 9, "grade": 9, "level": 8}
    x = data.train.features
    # b is missing in rows 2 and 7: value 0 (the local mean), indicator 1.
    assert (x[1, 1].item(), x[1, 3].item(), x[6, 3].item()) == (0.0, 1.0, 1.0)
    assert x[:, 2].sum() == 0.0  # a is never missing
    observed = x[:, 3] == 0.0
    # Standardised with local statistics over the observed values.
    assert torch.allclose(x[observed, 1].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(x[:, 0].std(unbiased=False), torch.tensor(1.0), atol=1e-5)
    assert data.train.masks["level"].tolist() == [True, False, True, True, False] + [True] * 5
    assert data.label_scales["level"].local


def test_statistics_come_from_the_training_split_only(tmp_path: Path) -> None:
    data = load_dataset(mapping(write(tmp_path), validation_fraction=0.3), small_spec())
    assert data.n_validation > 0
    assert torch.allclose(data.train.features[:, 0].mean(), torch.tensor(0.0), atol=1e-6)
    assert not torch.allclose(data.validation.features[:, 0].mean(), torch.tensor(0.0))


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    path = write(tmp_path)
    one = load_dataset(mapping(path, validation_fraction=0.3), small_spec())
    two = load_dataset(mapping(path, validation_fraction=0.3), small_spec())
    other = load_dataset(mapping(path, validation_fraction=0.3, split_seed=7), small_spec())
    assert torch.equal(one.validation.features, two.validation.features)
    assert not torch.equal(one.validation.features, other.validation.features)


def test_fixed_regression_scale_and_derived_binary_label(tmp_path: Path) -> None:
    m = mapping(
        write(tmp_path),
        validation_fraction=0.0,
        labels={
            "flag": {"column": "grade", "positive_above": 0},
            "level": {"column": "level", "center": 5.0, "scale": 2.0},
        },
    )
    data = load_dataset(m, small_spec())
    assert data.tasks_held == ("flag", "level")
    assert data.train.labels["flag"][:3].tolist() == [0.0, 1.0, 1.0]
    assert data.train.labels["level"][0].item() == 0.0  # (5 - 5) / 2
    assert data.train.labels["level"][2].item() == 1.0  # (7 - 5) / 2
    assert not data.label_scales["level"].local


def test_parquet_and_headerless_csv(tmp_path: Path) -> None:
    frame = pd.read_csv(write(tmp_path), dtype=str, keep_default_na=False)
    numeric = frame.replace({"?": None, "": None}).astype(float)
    numeric.to_parquet(tmp_path / "local.parquet")
    from_parquet = load_dataset(
        mapping(tmp_path / "local.parquet", validation_fraction=0.0), small_spec()
    )
    headerless = write(tmp_path, CSV.split("\n", 1)[1], "noheader.csv")
    m = mapping(
        headerless,
        validation_fraction=0.0,
        header=False,
        columns=["a", "b", "flag", "grade", "level"],
    )
    from_csv = load_dataset(m, small_spec())
    assert torch.allclose(from_parquet.train.features, from_csv.train.features)
    assert from_parquet.labelled_train == from_csv.labelled_train


# -- bad input gets a clear error naming the column or setting --------------------------


def test_unknown_feature_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"features: unknown column 'bmi'"):
        load_dataset(mapping(write(tmp_path), features=["a", "bmi"]), small_spec())


def test_unknown_label_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"labels.flag: unknown column 'flagg'"):
        load_dataset(mapping(write(tmp_path), labels={"flag": "flagg"}), small_spec())


def test_task_with_no_labels_is_refused(tmp_path: Path) -> None:
    text = CSV.replace("\n1.0,10,1,0,5.0", "\n1.0,10,1,0,?")
    text = "\n".join(
        ",".join([*row.split(",")[:4], ""]) if i else row
        for i, row in enumerate(text.strip().split("\n"))
    )
    with pytest.raises(DataError, match=r"task 'level': label column 'level' has no labels"):
        load_dataset(mapping(write(tmp_path, text)), small_spec())


def test_non_numeric_feature_is_named_with_its_row(tmp_path: Path) -> None:
    text = CSV.replace("3.0,30", "3.0,thirty")
    with pytest.raises(DataError, match=r"column 'b' is not numeric: row 3 holds 'thirty'"):
        load_dataset(mapping(write(tmp_path, text)), small_spec())


def test_task_not_in_the_federation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"labels: task 'mood' is not in federation 'small'"):
        load_dataset(mapping(write(tmp_path), labels={"mood": "flag"}), small_spec())


def test_target_column_as_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"column 'flag' is the label of task 'flag'"):
        mapping(write(tmp_path), features=["a", "flag"])


def test_wrong_number_of_features_names_the_encoder_setting(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"model.encoder.input_dim = 4"):
        load_dataset(mapping(write(tmp_path), features=["a"]), small_spec())


def test_label_values_must_fit_the_task_kind(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"task 'flag' \(column 'grade'\): binary labels"):
        load_dataset(mapping(write(tmp_path), labels={"flag": "grade"}), small_spec())
    with pytest.raises(DataError, match=r"multiclass labels must be integers 0..2"):
        load_dataset(mapping(write(tmp_path), labels={"grade": "level"}), small_spec())


def test_missing_file_and_bad_toml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(mapping(tmp_path / "nowhere.csv"), small_spec())
    bad = tmp_path / "m.toml"
    bad.write_text('path = "x.csv"\nfeatures = ["a"]\nlabels = {flag = "flag"}\nspeed = 3\n')
    with pytest.raises(DataError, match=r"speed: Extra inputs are not permitted"):
        DataMapping.from_toml(bad)


def test_relative_path_resolves_against_the_mapping_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub")
    file = tmp_path / "sub" / "m.toml"
    file.write_text('path = "local.csv"\nfeatures = ["a", "b"]\nlabels = {flag = "flag"}\n')
    m = DataMapping.from_toml(file)
    assert m.path == (tmp_path / "sub" / "local.csv").resolve()
    assert np.isclose(load_dataset(m, small_spec()).n_train + 0.0, 8.0)


def test_under_dp_one_record_never_moves_another_records_inputs_or_labels(
    tmp_path: Path,
) -> None:
    """The clipping bound bounds one record's influence only if the other records' scaled
    inputs and labels do not depend on it. Under DP a mapping without public scales is
    refused, and with them an added record (an outlier) leaves every other row as it was."""
    spec = small_spec(dp=True)
    plain = mapping(write(tmp_path), validation_fraction=0.0)
    with pytest.raises(DataError, match=r"feature_scales: no public scale for a, b; .* DP"):
        load_dataset(plain, spec)
    scaled = {
        "feature_scales": {"a": {"center": 5.0, "scale": 3.0}, "b": {"center": 50, "scale": 30}},
        "labels": {
            "flag": "flag",
            "grade": "grade",
            "level": {"column": "level", "center": 4.0, "scale": 2.0},
        },
        "validation_fraction": 0.0,
    }
    base = load_dataset(mapping(write(tmp_path), **scaled), spec)
    grown = load_dataset(
        mapping(write(tmp_path, CSV + "1000.0,9000,1,2,500.0\n", "grown.csv"), **scaled), spec
    )
    assert torch.equal(grown.train.features[:10], base.train.features)
    assert torch.equal(grown.train.labels["level"][:10], base.train.labels["level"])
    assert base.scaling.data_independent
    assert base.scaling.describe().startswith(
        "scales: fixed in the data mapping (public) for 2 features and 1 regression labels"
    )


def test_without_dp_unset_scales_come_from_local_statistics_and_say_so(tmp_path: Path) -> None:
    data = load_dataset(mapping(write(tmp_path)), small_spec())
    assert not data.scaling.data_independent
    assert "from local data (no DP in this federation): a, b, level" in data.scaling.describe()


def test_proposed_scales_are_local_means_and_deviations_rounded(tmp_path: Path) -> None:
    from agent.data import propose_scales

    proposed = propose_scales(mapping(write(tmp_path)), small_spec())
    assert proposed.rows == 10
    assert (proposed.features["a"].center, proposed.features["a"].scale) == (5.5, 2.9)
    assert proposed.features["b"].center == 58.0  # 57.5 over the 8 observed values
    assert set(proposed.labels) == {"level"}
