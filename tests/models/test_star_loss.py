from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

from mora_models.encoders import LinearTower, MLPTower
from mora_models.losses import LogitBuffers, LowRankEmbedding, info_nce, star_info_nce


def cross_entropy_reference(
    anchor: torch.Tensor, other: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The two cross-entropies of the definition, with log-softmax on rows and columns."""
    logits = F.normalize(anchor, dim=-1) @ F.normalize(other, dim=-1).T / temperature
    targets = torch.arange(len(anchor))
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def loss_and_gradients(loss_fn, anchor: torch.Tensor, other: torch.Tensor):
    anchor = anchor.clone().requires_grad_(True)
    other = other.clone().requires_grad_(True)
    loss = loss_fn(anchor, other)
    loss.backward()
    return loss.detach(), anchor.grad, other.grad


def test_info_nce_hand_computed_value():
    # Unit vectors m1 = (1, 0), m2 = (0, 1), x1 = (1, 0), x2 = (0.6, 0.8) at τ = 0.5
    # give logits [[2, 1.2], [0, 1.6]]. Rows (M→X) lose log(1 + e^-0.8) and
    # log(1 + e^-1.6); columns (X→M) lose log(1 + e^-2) and log(1 + e^-0.4).
    # The loss is the mean of the two directions' means.
    mobility = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # norms differ: rows are L2-normalised
    poi = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    expected = 0.25 * sum(math.log1p(math.exp(-v)) for v in (0.8, 1.6, 2.0, 0.4))

    loss = info_nce(mobility, poi, temperature=0.5)

    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    assert math.isclose(expected, 0.2987361675697604, rel_tol=1e-12)


def test_info_nce_is_symmetric_in_its_inputs():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)

    assert torch.allclose(info_nce(a, b, 0.7), info_nce(b, a, 0.7))


def test_star_averages_active_pairs():
    generator = torch.Generator().manual_seed(1)
    mobility = torch.randn(5, 4, generator=generator)
    poi = torch.randn(5, 4, generator=generator)
    census = torch.randn(3, 4, generator=generator)
    census_mask = torch.tensor([True, False, True, True, False])
    temperatures = {"poi": 0.5, "census": 0.7}

    result = star_info_nce(
        mobility,
        {"poi": (poi, torch.ones(5, dtype=torch.bool)), "census": (census, census_mask)},
        temperatures,
    )

    expected_poi = info_nce(mobility, poi, 0.5)
    expected_census = info_nce(mobility[census_mask], census, 0.7)
    assert torch.allclose(result.pairs["poi"], expected_poi)
    assert torch.allclose(result.pairs["census"], expected_census)
    assert torch.allclose(result.total, (expected_poi + expected_census) / 2)
    assert result.counts == {"poi": 5, "census": 3}


def test_star_pair_with_one_cell_contributes_nothing():
    generator = torch.Generator().manual_seed(2)
    mobility = torch.randn(4, 4, generator=generator, requires_grad=True)
    poi = torch.randn(4, 4, generator=generator)
    imagery = torch.randn(1, 4, generator=generator)
    imagery_mask = torch.tensor([False, True, False, False])
    temperatures = {"poi": 0.5, "imagery": 0.2}

    result = star_info_nce(
        mobility,
        {"poi": (poi, torch.ones(4, dtype=torch.bool)), "imagery": (imagery, imagery_mask)},
        temperatures,
    )

    assert set(result.pairs) == {"poi"}
    assert torch.allclose(result.total, info_nce(mobility, poi, 0.5))
    assert result.counts["imagery"] == 1


def test_star_without_active_pair_is_zero_and_differentiable():
    mobility = torch.randn(3, 4, requires_grad=True)
    one_cell = torch.tensor([True, False, False])

    result = star_info_nce(mobility, {"poi": (torch.randn(1, 4), one_cell)}, {"poi": 0.5})
    result.total.backward()

    assert float(result.total.detach()) == 0.0
    assert torch.equal(mobility.grad, torch.zeros(3, 4))


# τ = 0.01 with 300 cells exceeds the exponent bound and takes the log-softmax path.
@pytest.mark.parametrize(("size", "temperature"), [(2, 0.5), (9, 0.2), (300, 0.7), (300, 0.01)])
def test_info_nce_matches_cross_entropies(size, temperature):
    generator = torch.Generator().manual_seed(size)
    anchor = torch.randn(size, 16, generator=generator, dtype=torch.float64)
    other = torch.randn(size, 16, generator=generator, dtype=torch.float64)

    loss, grad_anchor, grad_other = loss_and_gradients(
        lambda a, b: info_nce(a, b, temperature), anchor, other
    )
    expected, expected_anchor, expected_other = loss_and_gradients(
        lambda a, b: cross_entropy_reference(a, b, temperature), anchor, other
    )

    assert torch.allclose(loss, expected, rtol=1e-12)
    assert torch.allclose(grad_anchor, expected_anchor, rtol=1e-9, atol=1e-15)
    assert torch.allclose(grad_other, expected_other, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("tower_kind", ["linear", "mlp"])
def test_low_rank_tower_output_gives_same_loss(tower_kind):
    torch.manual_seed(3)
    tower = LinearTower(5, 32) if tower_kind == "linear" else MLPTower(5, 8, 32)
    tower.double()
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(50, 5, generator=generator, dtype=torch.float64)
    mobility = torch.randn(50, 32, generator=generator, dtype=torch.float64)

    factors = tower.low_rank(features)
    assert factors.rank == (6 if tower_kind == "linear" else 9)
    assert torch.allclose(factors.dense(), tower(features), atol=1e-12)

    low_rank = info_nce(mobility, factors, 0.3)
    low_rank.backward()
    low_rank_grads = [param.grad.clone() for param in tower.parameters()]
    tower.zero_grad()
    dense = info_nce(mobility, tower(features), 0.3)
    dense.backward()

    assert torch.allclose(low_rank, dense, rtol=1e-12)
    for low_rank_grad, param in zip(low_rank_grads, tower.parameters(), strict=True):
        assert torch.allclose(low_rank_grad, param.grad, rtol=1e-9, atol=1e-14)


def test_low_rank_of_full_rank_uses_dense_product():
    generator = torch.Generator().manual_seed(5)
    mobility = torch.randn(20, 4, generator=generator, dtype=torch.float64)
    factors = LowRankEmbedding(
        torch.randn(20, 6, generator=generator, dtype=torch.float64),
        torch.randn(4, 6, generator=generator, dtype=torch.float64),
    )

    assert torch.allclose(
        info_nce(mobility, factors, 0.5), info_nce(mobility, factors.dense(), 0.5)
    )


def test_logit_buffers_are_reused_and_give_same_result():
    generator = torch.Generator().manual_seed(6)
    anchor = torch.randn(64, 8, generator=generator)
    other = torch.randn(64, 8, generator=generator)
    buffers = LogitBuffers()

    first = loss_and_gradients(lambda a, b: info_nce(a, b, 0.5, buffers), anchor, other)
    pooled = buffers._free[0]
    second = loss_and_gradients(lambda a, b: info_nce(a, b, 0.5, buffers), anchor, other)
    fresh = loss_and_gradients(lambda a, b: info_nce(a, b, 0.5), anchor, other)

    assert len(buffers._free) == 1
    assert buffers._free[0] is pooled
    for pooled_value, fresh_value in zip(first, fresh, strict=True):
        assert torch.equal(pooled_value, fresh_value)
    for pooled_value, fresh_value in zip(second, fresh, strict=True):
        assert torch.equal(pooled_value, fresh_value)


def test_logit_buffers_are_not_shared_by_pending_losses():
    generator = torch.Generator().manual_seed(7)
    anchor = torch.randn(32, 8, generator=generator, requires_grad=True)
    other = torch.randn(32, 8, generator=generator)
    shifted = torch.randn(32, 8, generator=generator)
    buffers = LogitBuffers()
    info_nce(anchor, other, 0.5, buffers).backward()
    anchor.grad = None

    # Two losses wait for one backward pass: each must keep its own buffer.
    (info_nce(anchor, other, 0.5, buffers) + info_nce(anchor, shifted, 0.5, buffers)).backward()
    pooled_grad = anchor.grad.clone()
    anchor.grad = None
    (info_nce(anchor, other, 0.5) + info_nce(anchor, shifted, 0.5)).backward()

    assert torch.equal(pooled_grad, anchor.grad)
    assert len(buffers._free) == 2


def test_fused_backward_runs_once():
    anchor = torch.randn(8, 4, requires_grad=True)
    loss = info_nce(anchor, torch.randn(8, 4), 0.5)
    loss.backward(retain_graph=True)

    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()
