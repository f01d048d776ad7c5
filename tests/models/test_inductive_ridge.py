from __future__ import annotations

import torch

from mora_models.inductive import _ridge


def with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1)], dim=1)


def test_ridge_recovers_a_noise_free_linear_map():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(300, 6, generator=generator)
    weights = torch.randn(6, 4, generator=generator)
    bias = torch.randn(4, generator=generator)
    targets = inputs @ weights + bias

    fitted = _ridge(inputs, targets)

    assert fitted.shape == (7, 4)
    assert torch.allclose(with_bias(inputs) @ fitted, targets, atol=0.02)
    assert torch.allclose(fitted[-1], bias, atol=0.02)


def test_ridge_shrinks_when_inputs_are_noise():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(60, 50, generator=generator)
    targets = torch.randn(60, 3, generator=generator) + 5.0

    fitted = _ridge(inputs, targets)

    # Leave-one-out error picks a strong penalty: predictions stay near the mean.
    predictions = with_bias(inputs) @ fitted
    assert (predictions - targets.mean(dim=0)).abs().max() < 0.5
