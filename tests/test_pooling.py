"""Pooling: hand-worked values for every operator, the R-MAC grid, properties, and the factory."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from matchlens.config import POOLING_NAMES
from matchlens.errors import ConfigError
from matchlens.pooling import (
    POOLINGS, GeM, crow, gem, mac, make_pooling, pooling_names, rmac, rmac_regions, spoc,
    spoc_prior,
)

FUNCTIONS = {"mac": mac, "spoc": spoc, "gem": gem, "rmac": rmac, "crow": crow}


def fmap(*channels: list[list[float]]) -> torch.Tensor:
    """A (1, C, H, W) float64 map from per-channel nested lists."""
    return torch.tensor([channels], dtype=torch.float64)


def close(actual: torch.Tensor, expected: list, tol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=0)


def random_map(seed: int, b: int = 2, c: int = 4, h: int = 5, w: int = 7, low: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    return low + torch.rand(b, c, h, w, generator=g, dtype=torch.float64)


# --- MAC ----------------------------------------------------------------------------------------
def test_mac_is_the_max_of_the_positive_part():
    x = fmap([[1, -2], [3, 0.5]],       # max 3
             [[-1, -2], [-3, -0.5]],    # all negative: clamped to 0
             [[0, 0], [0, 0]])
    close(mac(x), [[3.0, 0.0, 0.0]])


# --- SPoC ---------------------------------------------------------------------------------------
def test_spoc_prior_3x3():
    # sigma = 3/6 = 0.5, 2 sigma^2 = 0.5; squared distances from the centre: centre cell 0,
    # edge cells 1, corners 2
    e2, e4 = math.exp(-2), math.exp(-4)
    close(spoc_prior(3, 3, dtype=torch.float64), [[e4, e2, e4], [e2, 1, e2], [e4, e2, e4]])


def test_spoc_prior_non_square_2x4():
    # W=4, H=2: centre (2, 1); sigma = min/6 = 1/3, 2 sigma^2 = 2/9.
    # x offsets ±1.5, ±0.5 and y offsets ±0.5 -> squared distances 2.5 (outer), 0.5 (inner).
    outer, inner = math.exp(-2.5 * 4.5), math.exp(-0.5 * 4.5)
    row = [outer, inner, inner, outer]
    close(spoc_prior(2, 4, dtype=torch.float64), [row, row])


def test_spoc_prior_single_row_and_pixel():
    # 1x3: sigma = 1/6, 2 sigma^2 = 1/18, side cells at distance 1 -> exp(-18)
    close(spoc_prior(1, 3, dtype=torch.float64), [[math.exp(-18), 1.0, math.exp(-18)]])
    close(spoc_prior(1, 1, dtype=torch.float64), [[1.0]])


def test_spoc_weighted_and_plain_sum():
    x = fmap([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    # centre 5 * 1, edges (2+4+6+8) * e^-2, corners (1+3+7+9) * e^-4
    close(spoc(x), [[5 + 20 * math.exp(-2) + 20 * math.exp(-4)]])
    close(spoc(x, centre_prior=False), [[45.0]])


# --- GeM ----------------------------------------------------------------------------------------
def test_gem_hand_values():
    x = fmap([[1, 2], [3, 4]])
    close(gem(x, p=1.0), [[2.5]])                                  # mean
    close(gem(x, p=2.0), [[math.sqrt(30 / 4)]])                     # (1+4+9+16)/4
    close(gem(x, p=3.0), [[25 ** (1 / 3)]])                         # (1+8+27+64)/4 = 25
    close(gem(x, p=torch.tensor([3.0], dtype=torch.float64)), [[25 ** (1 / 3)]])


def test_gem_clamps_non_positive_values_at_eps():
    close(gem(fmap([[-5.0, 0.0]]), p=3.0, eps=1e-6), [[1e-6]], tol=1e-15)


def test_gem_gradient_in_p_hand_computed():
    # M(p) = ((1 + 2^p)/2)^(1/p); d ln M/dp at p=1 = -ln(1.5) + (2 ln 2)/3, and M(1) = 1.5
    p = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    gem(fmap([[1.0, 2.0]]), p=p).sum().backward()
    expected = 1.5 * (-math.log(1.5) + 2 * math.log(2) / 3)        # 0.0849495...
    assert p.grad is not None
    assert p.grad.item() == pytest.approx(expected, abs=1e-9)


# --- R-MAC grid ---------------------------------------------------------------------------------
def test_rmac_regions_5x7_worked_by_hand():
    # short side 5, long 7. Long-side steps s=2..7 give strides (7-5)/(s-1) = 2, 1, 2/3, ...;
    # overlaps 1 - stride/5 = 0.6, 0.8, ... -> |overlap - 0.4| is smallest for s=2: one extra
    # region along W at every level.
    # l=1: side floor(10/2)=5, 2 along W (starts 0, 2), 1 along H.
    # l=2: side floor(10/3)=3, 3 along W (stride 2: 0, 2, 4), 2 along H (stride 2: 0, 2).
    # l=3: side floor(10/4)=2, 4 along W (stride 5/3: 0, 1, 3, 5), 3 along H (stride 1.5: 0, 1, 3).
    expected = [(0, 0, 5, 7)]
    expected += [(0, x, 5, 5) for x in (0, 2)]
    expected += [(y, x, 3, 3) for y in (0, 2) for x in (0, 2, 4)]
    expected += [(y, x, 2, 2) for y in (0, 1, 3) for x in (0, 1, 3, 5)]
    assert rmac_regions(5, 7, 3) == expected
    assert len(expected) == 21
    # the same map stood on its side: extra regions go along H (same regions, transposed)
    assert sorted(rmac_regions(7, 5, 3)) == sorted((x, y, w, h) for (y, x, h, w) in expected)


def test_rmac_regions_square_map_repeats_the_full_region():
    # 4x4: no extra regions; l=1 is the whole map again (cirtorch counts it twice);
    # l=2: side floor(8/3)=2, starts 0, 2; l=3: side 2, starts 0, 1, 2.
    expected = [(0, 0, 4, 4), (0, 0, 4, 4)]
    expected += [(y, x, 2, 2) for y in (0, 2) for x in (0, 2)]
    expected += [(y, x, 2, 2) for y in (0, 1, 2) for x in (0, 1, 2)]
    assert rmac_regions(4, 4, 3) == expected


def test_rmac_regions_skip_empty_levels():
    # 1x1: l=1 side 1; l>=2 side floor(2/(l+1)) = 0 -> skipped
    assert rmac_regions(1, 1, 3) == [(0, 0, 1, 1), (0, 0, 1, 1)]


def test_rmac_regions_follow_cirtorch_float32_at_a_tie():
    # 3x11: 5 and 6 long-side regions tie exactly (|0.6 - 8/12| = |0.6 - 8/15| = 1/15);
    # cirtorch's float32 arithmetic picks 6 (stride 8/5: starts 0, 1, 3, 4, 6, 8).
    assert rmac_regions(3, 11, 1) == [(0, 0, 3, 11)] + [(0, x, 3, 3) for x in (0, 1, 3, 4, 6, 8)]


def test_rmac_regions_rejects_no_levels():
    with pytest.raises(ValueError):
        rmac_regions(4, 4, 0)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 60), w=st.integers(1, 60), levels=st.integers(1, 5))
def test_rmac_regions_properties(h, w, levels):
    regions = rmac_regions(h, w, levels)
    assert regions[0] == (0, 0, h, w)
    for y0, x0, rh, rw in regions[1:]:
        assert rh == rw >= 1                                        # squares
        assert 0 <= y0 and y0 + rh <= h and 0 <= x0 and x0 + rw <= w  # inside the map
    transposed = sorted((x, y, rw, rh) for (y, x, rh, rw) in regions)
    assert sorted(rmac_regions(w, h, levels)) == transposed


# --- R-MAC values -------------------------------------------------------------------------------
def test_rmac_hand_value_2x2():
    # regions for 2x2, L=2: full, full again (l=1), then the four single cells (l=2).
    assert rmac_regions(2, 2, 2) == [(0, 0, 2, 2), (0, 0, 2, 2), (0, 0, 1, 1), (0, 1, 1, 1),
                                     (1, 0, 1, 1), (1, 1, 1, 1)]
    x = fmap([[3, 0], [0, 1]], [[0, 4], [0, 1]])
    # full MAC (3, 4) -> (0.6, 0.8), twice; cells: (3,0)->(1,0), (0,4)->(0,1), (0,0)->0,
    # (1,1)->(1/√2, 1/√2)
    r = 1 / math.sqrt(2)
    close(rmac(x, levels=2), [[1.2 + 1 + r, 1.6 + 1 + r]], tol=1e-5)


def test_rmac_single_channel_counts_regions():
    # one positive channel: every normalised region vector is ~1, so R-MAC = number of regions
    x = random_map(0, b=1, c=1, h=5, w=7, low=0.5)
    close(rmac(x), [[21.0]], tol=1e-4)


# --- CroW ---------------------------------------------------------------------------------------
def test_crow_hand_value():
    x = fmap([[1, 0], [0, 0]], [[1, 1], [1, 1]])
    # S' = [[2,1],[1,1]], ||S'||_2 = √7, S = sqrt(S'/√7)
    s_big, s_small = math.sqrt(2 / math.sqrt(7)), math.sqrt(1 / math.sqrt(7))
    # Q = (1/4, 1); C_1 = log(1.25/0.25) = log 5, C_2 = log(1.25/1)   (eps terms ~1e-6)
    f1 = math.log(5) * s_big
    f2 = math.log(1.25) * (s_big + 3 * s_small)
    close(crow(x), [[f1, f2]], tol=1e-5)
    # a large eps makes the smoothing visible: C = (log(2.25/0.75), log(2.25/1.5)) = (log 3, log 1.5)
    close(crow(x, eps=0.5), [[math.log(3) * s_big, math.log(1.5) * (s_big + 3 * s_small)]])


def test_crow_exponents_a1_b1():
    x = fmap([[2, 0], [0, 2]], [[0, 0], [0, 4]])
    # S' = [[2,0],[0,6]], ||S'||_1 = 8, S = S'/8; Q = (1/2, 1/4), ΣQ = 3/4
    # C = (log(0.75/0.5), log(0.75/0.25)); sums: ch1 2*(2/8) + 2*(6/8) = 2, ch2 4*(6/8) = 3
    close(crow(x, a=1.0, b=1.0), [[math.log(1.5) * 2, math.log(3) * 3]], tol=1e-5)


def test_crow_all_zero_map_is_zero():
    close(crow(torch.zeros(1, 3, 2, 2, dtype=torch.float64)), [[0.0, 0.0, 0.0]])


# --- properties shared by all operators ---------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0),
       h=st.integers(1, 9), w=st.integers(1, 9))
def test_positive_homogeneity(seed, scale, h, w):
    """Scaling the map scales MAC, SPoC, GeM and CroW (degree 1) and leaves R-MAC unchanged."""
    x = random_map(seed, h=h, w=w, low=0.05)  # well above eps, so the clamps never bite
    for name in ("mac", "spoc", "gem", "crow"):
        torch.testing.assert_close(FUNCTIONS[name](scale * x), scale * FUNCTIONS[name](x))
    torch.testing.assert_close(rmac(scale * x), rmac(x), atol=1e-4, rtol=1e-5)  # float32 sums of ~10


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), p=st.floats(1.0, 12.0))
def test_gem_lies_between_mean_and_max(seed, p):
    x = random_map(seed, low=0.01)
    g = gem(x, p=p)
    assert torch.all(x.mean(dim=(-2, -1)) <= g + 1e-12)
    assert torch.all(g <= mac(x) + 1e-12)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_batch_items_are_pooled_independently(name):
    x = random_map(7, b=3, h=6, w=9)
    together = FUNCTIONS[name](x)
    apart = torch.cat([FUNCTIONS[name](x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, apart)
    assert together.shape == (3, 4)


def test_spoc_is_symmetric_under_flips():
    x = random_map(3, h=6, w=5)
    torch.testing.assert_close(spoc(x.flip(-1)), spoc(x))
    torch.testing.assert_close(spoc(x.flip(-2)), spoc(x))


def test_functions_reject_non_maps():
    with pytest.raises(ValueError):
        mac(torch.zeros(2, 3))


# --- modules and factory ------------------------------------------------------------------------
def test_names_match_the_pipeline_spec():
    assert pooling_names() == ["crow", "gem", "learned-rmac", "mac", "rmac", "spoc"]
    assert set(pooling_names()) == set(POOLING_NAMES)
    assert "GeM" in POOLINGS


@pytest.mark.parametrize("name, params", [
    ("mac", {}), ("spoc", {"centre_prior": False}), ("gem", {"p": 4.0}),
    ("rmac", {"levels": 2}), ("crow", {"a": 1.0, "b": 1.0}),
])
def test_module_matches_function_and_round_trips(name, params):
    module = make_pooling(name, **params)
    x = random_map(11)
    torch.testing.assert_close(module(x), FUNCTIONS[name](x, **params))
    stored = json.loads(json.dumps(module.params()))       # what the pipeline spec keeps
    again = make_pooling(module.name, **stored)
    assert again.params() == module.params()
    assert repr(module).startswith(type(module).__name__ + "(")
    for key, value in params.items():
        assert f"{key}={value!r}" in repr(module)


def test_factory_is_case_insensitive():
    assert isinstance(make_pooling("GeM"), GeM)


def test_gem_learn_p_is_a_trainable_parameter():
    module = make_pooling("gem", p=1.0, learn_p=True)
    assert [name for name, _ in module.named_parameters()] == ["p"]
    module(fmap([[1.0, 2.0]]).float()).sum().backward()
    expected = 1.5 * (-math.log(1.5) + 2 * math.log(2) / 3)
    assert module.p.grad.item() == pytest.approx(expected, abs=1e-5)
    with torch.no_grad():
        module.p.fill_(2.5)
    assert module.params() == {"p": 2.5, "eps": 1e-6, "learn_p": True}
    assert make_pooling("gem").params()["learn_p"] is False
    assert list(make_pooling("gem").parameters()) == []


def _config_error(name: str, **params) -> str:
    with pytest.raises(ConfigError) as info:
        make_pooling(name, **params)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_name_lists_the_valid_ones():
    message = _config_error("netvlad")
    assert "netvlad" in message and "crow, gem, learned-rmac, mac, rmac, spoc" in message


def test_unknown_parameter_lists_the_valid_ones():
    message = _config_error("gem", q=3)
    assert "q" in message and "p, eps, learn_p" in message
    assert "valid: none" in _config_error("mac", p=3)


@pytest.mark.parametrize("name, params, key", [
    ("gem", {"p": 0}, "p"), ("gem", {"p": -1.0}, "p"), ("gem", {"p": "3"}, "p"),
    ("gem", {"p": True}, "p"), ("gem", {"p": float("nan")}, "p"), ("gem", {"eps": 0.0}, "eps"),
    ("gem", {"learn_p": 1}, "learn_p"), ("rmac", {"levels": 0}, "levels"),
    ("rmac", {"levels": 2.5}, "levels"), ("crow", {"a": 0.0}, "a"), ("crow", {"b": -2}, "b"),
    ("spoc", {"centre_prior": "yes"}, "centre_prior"),
])
def test_invalid_values_are_config_errors(name, params, key):
    assert key in _config_error(name, **params)


def test_non_string_name_is_a_config_error():
    with pytest.raises(ConfigError):
        make_pooling(None)  # type: ignore[arg-type]
