"""What the server sees: no participant's encoded input, and masked vectors that look uniform."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privacy.secagg import FixedPointCodec, FloatSegment, MaskedInput

from .roundsim import Progress, make_federation, no_dropouts, random_inputs, run_round

# A chi-square test this strict fails a truly uniform vector once in a million runs.
FALSE_ALARM_RATE = 1e-6
BINS = 256


def _looks_uniform(vector: np.ndarray, shift: int) -> bool:
    """Chi-square test of one byte (bits shift..shift+7) of each coordinate against uniform."""
    values = (vector.astype(np.uint64) >> np.uint64(shift)) & np.uint64(BINS - 1)
    counts = np.bincount(values.astype(np.int64), minlength=BINS)
    expected = len(vector) / BINS
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return statistic < stats.chi2.isf(FALSE_ALARM_RATE, BINS - 1)


@pytest.mark.parametrize("degree", [None, 4], ids=["full", "graph"])
def test_server_view_contains_no_participants_encoded_input(degree) -> None:
    local = None if degree is None else 3
    federation = make_federation(8, 5, 64, degree=degree, graph_threshold=local)
    inputs = random_inputs(federation.config, np.random.default_rng(4))
    dropouts = no_dropouts() | {"masked_input": frozenset({8})}
    outcome = run_round(federation, inputs, dropouts)
    assert outcome.total is not None  # the round worked, so the view is a full round's view
    view = outcome.server_view
    assert len(view) >= 8 * 4
    for pid, vector in inputs.items():
        raw = vector.tobytes()
        for start in range(0, len(raw), 16):  # every 4-coordinate window of the input
            window = raw[start : start + 16]
            assert not any(window in message for message in view), (pid, start)
    uploads = [MaskedInput.from_bytes(m) for m in view if m[:4] == b"SAMI"]
    assert len(uploads) == 7
    for upload in uploads:
        same = np.count_nonzero(upload.vector == inputs[upload.sender])
        assert same <= 1  # equal coordinates happen by chance with probability 2^-32 each


@pytest.mark.parametrize("bits", [32, 64])
def test_a_masked_input_is_indistinguishable_from_uniform(bits: int) -> None:
    d = 1 << 16
    federation = make_federation(5, 3, d, bits=bits, degree=2, graph_threshold=2)
    progress = Progress.start(federation).share_keys()
    codec = FixedPointCodec([FloatSegment("encoder", d, clip=1.0)], bits=bits, max_participants=5)
    # A very non-uniform input: small updates, all in a narrow band around zero.
    update = np.random.default_rng(5).normal(0.0, 0.01, d)
    encoded = codec.encode({"encoder": update}).vector
    assert not _looks_uniform(encoded, bits - 8)  # the test can tell this input apart
    masked = progress.clients[1].masked_input(progress.bundles[1], encoded).vector
    for shift in (0, bits // 2, bits - 8):
        assert _looks_uniform(masked, shift), shift
