"""The layout both sides derive from a spec, the model built on it, and the aggregation math."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from federation.aggregation import ServerState, apply_sums, local_contribution
from federation.errors import AggregationError, LayoutMismatch
from federation.layout import ParameterLayout, SegmentKind
from federation.model import build_model, load_model_vector, model_vector
from federation.spec import FederationSpec, PersonalisationMode, PersonalisationSpec


def make_spec(**aggregation: object) -> FederationSpec:
    return FederationSpec.model_validate(
        {
            "name": "demo",
            "tasks": [
                {"name": "disease", "kind": "binary"},
                {"name": "severity", "kind": "multiclass", "n_classes": 5},
                {"name": "max_hr", "kind": "regression"},
            ],
            "model": {
                "encoder": {"kind": "mlp", "input_dim": 7, "hidden": [8, 4]},
                "head": {"hidden": [3]},
            },
            "aggregation": aggregation,
        }
    )


def test_model_layout_matches_the_torch_model_parameter_for_parameter() -> None:
    spec = make_spec()
    model = build_model(spec)
    layout = ParameterLayout.model(spec)
    assert layout.length == sum(p.numel() for p in model.parameters())
    assert [s.name for s in layout.segments] == [
        "encoder",
        "head.disease",
        "head.severity",
        "head.max_hr",
    ]


def test_initial_weights_are_deterministic_from_the_seed_whatever_the_global_rng() -> None:
    spec = make_spec()
    layout = ParameterLayout.model(spec)
    torch.manual_seed(1)
    first = model_vector(build_model(spec), layout)
    torch.manual_seed(2)
    second = model_vector(build_model(spec), layout)
    other = model_vector(
        build_model(
            spec.model_copy(update={"model": spec.model.model_copy(update={"init_seed": 5})})
        ),
        layout,
    )
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_vector_round_trips_through_the_model() -> None:
    spec = make_spec()
    layout = ParameterLayout.model(spec)
    model = build_model(spec)
    vector = np.random.default_rng(0).normal(size=layout.length)
    load_model_vector(model, layout, vector, fingerprint=layout.fingerprint)
    np.testing.assert_allclose(model_vector(model, layout), vector, rtol=1e-6)


def test_a_model_refuses_a_vector_of_another_layout() -> None:
    spec = make_spec()
    other = spec.model_copy(
        update={
            "model": spec.model.model_copy(
                update={"head": spec.model.head.model_copy(update={"hidden": (2,)})}
            )
        }
    )
    layout, other_layout = ParameterLayout.model(spec), ParameterLayout.model(other)
    assert layout.fingerprint != other_layout.fingerprint
    model = build_model(spec)
    with pytest.raises(LayoutMismatch, match="layout"):
        load_model_vector(model, layout, layout.zeros(), fingerprint=other_layout.fingerprint)
    with pytest.raises(LayoutMismatch, match="shape"):
        load_model_vector(model, layout, other_layout.zeros())
    bad = layout.zeros()
    bad[3] = np.nan
    with pytest.raises(LayoutMismatch, match="NaN"):
        load_model_vector(model, layout, bad)


def test_update_layout_has_a_counter_per_aggregated_part() -> None:
    spec = make_spec()
    update = ParameterLayout.update(spec)
    assert [s.name for s in update.counter_segments] == [
        "count.encoder",
        "count.disease",
        "count.severity",
        "count.max_hr",
    ]
    assert all(s.kind is SegmentKind.COUNTER and s.bound == 1 for s in update.counter_segments)
    fedper = make_spec().model_copy(
        update={"personalisation": PersonalisationSpec(mode=PersonalisationMode.FEDPER)}
    )
    personal = ParameterLayout.update(fedper)
    assert [s.name for s in personal.segments if not s.name.startswith("metric.")] == [
        "encoder",
        "count.encoder",
    ]


def test_personalised_heads_flag_is_refused_in_favour_of_the_fedper_mode() -> None:
    with pytest.raises(ValidationError, match=r"personalisation\.mode = 'fedper'"):
        make_spec(personalised_heads=True)


def test_heads_average_only_over_institutions_holding_the_task() -> None:
    spec = make_spec()
    model_layout = ParameterLayout.model(spec)
    rng = np.random.default_rng(1)
    start = rng.normal(size=model_layout.length) * 0.1
    a_local = start + 0.01
    b_local = start - 0.03
    a = local_contribution(spec, start, a_local, train_samples=10, labelled={"disease": 5})
    b = local_contribution(
        spec, start, b_local, train_samples=10, labelled={"disease": 5, "severity": 4}
    )
    sums = {name: a.segments[name] + b.segments[name] for name in a.segments}
    new, _, report = apply_sums(spec, start, sums)
    parts = model_layout.split(new)
    base = model_layout.split(start)
    np.testing.assert_allclose(parts["encoder"], base["encoder"] - 0.01)
    np.testing.assert_allclose(parts["head.disease"], base["head.disease"] - 0.01)
    np.testing.assert_allclose(parts["head.severity"], base["head.severity"] - 0.03)
    np.testing.assert_array_equal(parts["head.max_hr"], base["head.max_hr"])  # nobody holds it
    assert report.weights["head.max_hr"] == 0


def test_fedadam_moves_only_trained_parts_and_keeps_state() -> None:
    spec = make_spec(strategy="fedadam", server_lr=0.01)
    layout = ParameterLayout.model(spec)
    start = layout.zeros()
    c = local_contribution(spec, start, start + 0.5, train_samples=3, labelled={"disease": 3})
    new, state, _ = apply_sums(spec, start, c.segments, ServerState())
    parts = layout.split(new)
    assert np.all(parts["head.disease"] > 0)
    assert np.all(parts["head.severity"] == 0)
    restored = ServerState.from_bytes(state.to_bytes(), layout.length)
    assert restored.m is not None
    assert state.m is not None
    np.testing.assert_array_equal(restored.m, state.m)


def test_bad_sums_are_refused() -> None:
    spec = make_spec()
    layout = ParameterLayout.model(spec)
    c = local_contribution(spec, layout.zeros(), layout.zeros(), train_samples=1, labelled={})
    sums = dict(c.segments)
    del sums["count.disease"]
    with pytest.raises(AggregationError, match="segments"):
        apply_sums(spec, layout.zeros(), sums)
    sums = dict(c.segments)
    sums["count.encoder"] = np.array([-1])
    with pytest.raises(AggregationError, match="negative"):
        apply_sums(spec, layout.zeros(), sums)


def test_contribution_clips_and_counts_what_it_clipped() -> None:
    spec = make_spec()
    layout = ParameterLayout.model(spec)
    local = layout.zeros()
    local[0] = 5.0  # beyond clip_range = 1.0
    c = local_contribution(spec, layout.zeros(), local, train_samples=1, labelled={})
    assert c.clipped == 1
    assert c.segments["encoder"][0] == pytest.approx(1.0)


def test_server_momentum_accumulates_repeated_updates() -> None:
    spec = make_spec(strategy="fedavgm", server_lr=1.0, server_momentum=0.5)
    layout = ParameterLayout.model(spec)
    start = layout.zeros()
    state = ServerState()
    vector = start
    for _ in range(3):  # the same update of +0.1 each round: steps 0.1, 0.15, 0.175
        c = local_contribution(spec, vector, vector + 0.1, train_samples=3, labelled={"disease": 3})
        vector, state, _ = apply_sums(spec, vector, c.segments, state)
        state = ServerState.from_bytes(state.to_bytes(), layout.length)  # as the coordinator
    parts = layout.split(vector)
    np.testing.assert_allclose(parts["encoder"], 0.425)
    np.testing.assert_array_equal(parts["head.severity"], 0.0)  # nobody trained it


def test_fedyogi_second_moment_moves_additively() -> None:
    spec = make_spec(strategy="fedyogi", server_lr=0.1, adam_beta1=0.0, adam_beta2=0.5)
    layout = ParameterLayout.model(spec)
    start = layout.zeros()
    c = local_contribution(spec, start, start + 0.5, train_samples=3, labelled={"disease": 3})
    _, state, _ = apply_sums(spec, start, c.segments, ServerState())
    assert state.v is not None
    encoder = layout.segment("encoder")
    # v0 = 0 < Δ² = 0.25: v1 = 0 + (1 - 0.5) · 0.25 (Adam would give the same here) ...
    np.testing.assert_allclose(state.v[encoder.offset : encoder.end], 0.125)
    _, state, _ = apply_sums(spec, start, c.segments, state)
    assert state.v is not None
    # ... but then Yogi adds another 0.125 (v < Δ²) where Adam would give 0.1875.
    np.testing.assert_allclose(state.v[encoder.offset : encoder.end], 0.25)


def test_zero_initialised_heads_start_uninformed_and_keep_the_encoder_weights() -> None:
    spec = make_spec()
    zero = spec.model_copy(
        update={
            "model": spec.model.model_copy(
                update={"head": spec.model.head.model_copy(update={"zero_init": True})}
            )
        }
    )
    plain, zeroed = build_model(spec), build_model(zero)
    x = torch.randn(6, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = zeroed(x)
    assert torch.all(out["disease"] == 0)  # probability 1/2 for everyone
    assert torch.all(out["severity"] == 0)  # 1/5 for each class
    layout = ParameterLayout.model(spec)
    a, b = layout.split(model_vector(plain, layout)), layout.split(model_vector(zeroed, layout))
    np.testing.assert_array_equal(a["encoder"], b["encoder"])
