from __future__ import annotations

import math

import torch

from mora_models.losses import info_nce, star_info_nce


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
