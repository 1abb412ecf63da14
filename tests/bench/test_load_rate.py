"""The load generator's images/s: the rate of a staircase of batch completions, whatever the phase
of the measurement window."""

from __future__ import annotations

import pytest

from bench.load import completion_rate


@pytest.mark.parametrize("phase", [0.0, 0.1, 0.23, 0.4])
def test_batches_finishing_in_lumps_give_their_rate_at_any_phase(phase: float) -> None:
    batch, period = 8, 0.47  # 8-image batches every 0.47 s: 17.02 images/s
    completions = [phase + k * period + i * 0.002 for k in range(32) for i in range(batch)]
    assert completion_rate(completions, 1, 15.0) == pytest.approx(batch / period, rel=0.002)


def test_images_per_request_count() -> None:
    completions = [i * 0.5 for i in range(20)]  # one request every 0.5 s, 8 images each
    assert completion_rate(completions, 8, 10.0) == pytest.approx(16.0)


def test_too_few_completions_fall_back_to_the_count() -> None:
    assert completion_rate([1.0, 1.0], 1, 10.0) == pytest.approx(0.2)
    assert completion_rate([], 1, 10.0) == 0.0
