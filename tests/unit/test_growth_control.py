"""The closed loop's arithmetic (rule 12): the efficiency from the growth, the split of a
correction between SiCl4 and traverse inside the recipe's authority, and the outlook."""

from __future__ import annotations

import dataclasses

import pytest

from controller.recipes.authority import Authority
from controller.recipes.plan import LayerOp
from controller.recipes.process_model import grown_diameter_mm, mass_for_diameter_g
from controller.run.growth_control import GrowthEstimator, correct, outlook, pass_basis_g

LENGTH = 300.0
LAYER = LayerOp(name="inner", passes=6, power_kw=50, ar_slpm=0, o2_slpm=120, n2_slpm=30,
                sicl4_g_min=60, dopant_slpm=0.2, traverse_mm_min=330, spindle_rpm=30,
                heaters=False, coil_gap_mm=30, sicl4_trim_pct=(-10, 10),
                traverse_trim_pct=(-10, 10), sicl4_slpm=7.9, target_diameter_mm=31.8)
AUTHORITY = Authority(sicl4_scale=(0.9, 1.1), traverse_pct=(-10.0, 10.0), sicl4_high_by="trim")
BASIS = pass_basis_g(LAYER, LENGTH)


def grow(estimator: GrowthEstimator, diameter: float, efficiency: float, passes: float,
         readings_per_pass: int = 5) -> float:
    """Offer glass pass by pass at an efficiency, reading the gauge as it grows."""
    steps = round(passes * readings_per_pass)
    for _ in range(steps):
        grams = BASIS / readings_per_pass
        estimator.offer(60.0, grams / (60.0 * 0.354) * 60.0)
        diameter = grown_diameter_mm(diameter, efficiency * grams, LENGTH)
        estimator.observe(round(diameter, 2))  # the gauge's 0.01 mm resolution
    return diameter


def test_the_prior_stands_until_there_is_glass_enough_to_judge() -> None:
    estimator = GrowthEstimator(LENGTH, 0.5, resolution_mm=0.01, diameter_mm=30.0)
    grow(estimator, 30.0, 0.3, passes=0.4)
    assert estimator.efficiency(BASIS) == 0.5


def test_the_efficiency_follows_a_drift_within_two_passes() -> None:
    estimator = GrowthEstimator(LENGTH, 0.5, resolution_mm=0.01, diameter_mm=30.0)
    diameter = grow(estimator, 30.0, 0.5, passes=4)
    assert estimator.efficiency(BASIS) == pytest.approx(0.5, rel=0.03)
    grow(estimator, diameter, 0.4, passes=2)
    assert estimator.efficiency(BASIS) == pytest.approx(0.4, rel=0.03)


def test_a_reading_seen_late_is_paired_with_the_glass_of_its_moment() -> None:
    estimator = GrowthEstimator(LENGTH, 0.5, resolution_mm=0.01, diameter_mm=30.0)
    estimator.offer(60.0, 30.0)
    estimator.observe(30.5, basis_g=estimator.basis_g / 2)
    assert estimator.last is not None and estimator.last.basis_g == pytest.approx(
        estimator.basis_g / 2)


def test_a_small_shortfall_is_made_up_with_sicl4_alone_and_spread() -> None:
    needed_factor = 1.05
    diameter = 30.0
    boundary = grown_diameter_mm(diameter, 0.5 * BASIS * 6 * needed_factor, LENGTH)
    result = correct(diameter_mm=diameter, boundary_mm=boundary, remaining_passes=6,
                     efficiency=0.5, basis_per_pass_g=BASIS, length_mm=LENGTH,
                     authority=AUTHORITY, operator_traverse_pct=0.0, previous_factor=1.0,
                     max_step=0.1)
    assert result.wanted == pytest.approx(needed_factor)
    assert result.sicl4_scale == pytest.approx(needed_factor)
    assert result.traverse_pct == 0.0
    assert not result.limited and not result.step_limited


def test_beyond_the_sicl4_trim_the_traverse_slows() -> None:
    result = correct(diameter_mm=30.0, boundary_mm=grown_diameter_mm(30.0, 0.5 * BASIS * 6
                                                                     * 1.15, LENGTH),
                     remaining_passes=6, efficiency=0.5, basis_per_pass_g=BASIS,
                     length_mm=LENGTH, authority=AUTHORITY, operator_traverse_pct=0.0,
                     previous_factor=1.1, max_step=0.1)
    assert result.sicl4_scale == 1.1
    assert result.factor == pytest.approx(1.15)
    assert result.traverse_pct == pytest.approx((1.1 / 1.15 - 1) * 100)


def test_the_operators_traverse_trim_and_the_loop_share_one_budget() -> None:
    boundary = grown_diameter_mm(30.0, 0.5 * BASIS * 6 * 1.3, LENGTH)  # beyond the trims
    result = correct(diameter_mm=30.0, boundary_mm=boundary, remaining_passes=6,
                     efficiency=0.5, basis_per_pass_g=BASIS, length_mm=LENGTH,
                     authority=AUTHORITY, operator_traverse_pct=5.0, previous_factor=1.3,
                     max_step=0.5)
    # However the operator trimmed, the total stays inside the recipe's traverse trim.
    assert result.traverse_pct == pytest.approx(-10.0) and result.sicl4_scale == 1.1
    assert result.limited
    assert result.factor == pytest.approx(1.1 / 0.9)


def test_a_jump_is_bounded_per_pass() -> None:
    boundary = grown_diameter_mm(30.0, 0.5 * BASIS * 6 * 1.2, LENGTH)
    result = correct(diameter_mm=30.0, boundary_mm=boundary, remaining_passes=6,
                     efficiency=0.5, basis_per_pass_g=BASIS, length_mm=LENGTH,
                     authority=AUTHORITY, operator_traverse_pct=0.0, previous_factor=1.0,
                     max_step=0.1)
    assert result.factor == pytest.approx(1.1) and result.step_limited


def test_the_outlook_names_the_miss_and_the_extra_passes_that_land_it() -> None:
    later = dataclasses.replace(LAYER, name="middle", passes=7, target_diameter_mm=33.8)
    layers = [(0, LAYER, 6, AUTHORITY), (1, later, 7, AUTHORITY)]
    reachable = outlook(diameter_mm=30.0, layers=layers, efficiency=0.5, length_mm=LENGTH)
    assert reachable.misses(final_pct=0.1, thickness_pct=1.5, inner_mm=30.0) == ()
    short = outlook(diameter_mm=30.0, layers=layers, efficiency=0.3, length_mm=LENGTH)
    inner, _ = short.layers
    assert inner.expected_mm < inner.planned_mm and short.final_mm < 33.8
    assert short.misses(final_pct=0.1, thickness_pct=1.5, inner_mm=30.0) == short.layers
    # The extra passes it names land the boundary at the loop's limit.
    at_limit = 0.3 * BASIS * (1.1 / 0.9)
    needed = mass_for_diameter_g(30.0, inner.planned_mm, LENGTH)
    assert (6 + inner.extra_passes_needed - 1) * at_limit < needed
    assert (6 + inner.extra_passes_needed) * at_limit >= needed
