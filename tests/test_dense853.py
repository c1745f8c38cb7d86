"""dopri8 = Hairer's DOP853, one step at a time: local orders of the step, its two error estimates and its
order-7 dense output, and agreement with scipy's ``DOP853``.

These tests use the stepper (:func:`rk_step`), :func:`dense_stages` and :func:`continuous_extension` directly,
not the integration loop, so they hold whatever the loop does with ``b_err_aux`` and ``dense_extra``.

Local orders are measured as the slope of log(error) against log(dt) for single steps from the exact solution
of "rotexp" (tests/problems.py: nonlinear, non-autonomous, entire), on step sizes chosen so that the errors lie
between about 1e-7 and 1e-13, above float64 rounding (~1e-15 here) and in the asymptotic regime. A method of
order p has a local error O(dt^(p+1)): 9 for y1, 8 for the order-7 dense output; the embedded estimates of
orders 5 and 3 have slopes 6 and 4, and Hairer's combination of them slope 8.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralode.solvers.methods.interpolation import continuous_extension, dense_stages
from neuralode.solvers.methods.stepper import StepResult, combined_error_ratio, rk_step
from neuralode.solvers.methods.tableau import EXPLICIT_METHODS
from tests.problems import PROBLEMS

F64 = torch.float64
DOP853 = EXPLICIT_METHODS["dopri8"]
PROBLEM = PROBLEMS["rotexp"]
T0 = 0.3  # not the problem's t0 = 0, so that no symmetry of the start helps
THETAS = (0.3, 0.7)


def func(t: float, y: torch.Tensor) -> torch.Tensor:
    return PROBLEM.func(torch.tensor(t, dtype=F64), y)


def exact(t: float) -> torch.Tensor:
    return PROBLEM.exact(torch.tensor([t], dtype=F64))[0]


def one_step(dt: float, t0: float = T0, f=func):
    y0 = exact(t0)
    step = rk_step(f, t0, y0, f(t0, y0), dt, DOP853)
    k_full = step.k + dense_stages(f, t0, y0, step.k, dt, DOP853)
    return y0, step, k_full


def slope(dts, errors) -> float:
    return float(np.polyfit(np.log(dts), np.log(errors), 1)[0])


def geometric(start: float, n: int, ratio: float = 0.8) -> list[float]:
    return [start * ratio**i for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Local orders.

# Measured slopes (rotexp, t0 = 0.3): y1 9.00, dense 7.67 (theta 0.3) and 7.68 (0.7), E5 5.91, E3 3.92,
# combined ratio 7.90. The dense output's slope between successive step sizes still grows (7.4 at dt ~ 0.18,
# 7.9 at dt ~ 0.07), towards 8.


def test_local_order_of_y1_is_9():
    dts = geometric(0.2, 4)  # errors 2e-10 .. 4e-13
    errors = [float((one_step(dt)[1].y1 - exact(T0 + dt)).abs().max()) for dt in dts]
    s = slope(dts, errors)
    assert 8.5 < s < 9.5, (s, errors)


@pytest.mark.parametrize("theta", THETAS)
def test_local_order_of_dense_output_is_8(theta):
    dts = geometric(0.2, 5)  # errors 3e-10 .. 4e-13 (theta 0.3), 2e-9 .. 2e-12 (theta 0.7)
    errors = []
    for dt in dts:
        y0, _, k_full = one_step(dt)
        y = continuous_extension(y0, k_full, dt, DOP853.dense_extra, theta)
        errors.append(float((y - exact(T0 + theta * dt)).abs().max()))
    s = slope(dts, errors)
    assert 7.3 < s < 8.5, (s, errors)


def test_local_orders_of_the_error_estimates_are_6_and_4_and_combined_8():
    dts = geometric(0.1, 5)  # E5 2e-9 .. 1e-11, E3 9e-6 .. 3e-7, combined 5e-12 .. 4e-15
    e5, e3, combined = [], [], []
    for dt in dts:
        step = one_step(dt)[1]
        e5.append(float(step.y_err.abs().max()))
        e3.append(float(step.y_err_aux.abs().max()))
        combined.append(combined_error_ratio(e5[-1], e3[-1]))
    s5, s3, sc = slope(dts, e5), slope(dts, e3), slope(dts, combined)
    assert 5.5 < s5 < 6.5, (s5, e5)
    assert 3.5 < s3 < 4.5, (s3, e3)
    # The combination behaves like the local error of an order-7 estimate: error_order = 7, exponent 1/8.
    assert 7.5 < sc < 8.5, (sc, combined)
    assert min(DOP853.order, DOP853.error_order) + 1 == 8


def test_dense_output_backwards_in_time():
    dt = -0.1
    y0, step, k_full = one_step(dt, t0=1.0)
    for theta in THETAS:
        y = continuous_extension(y0, k_full, dt, DOP853.dense_extra, theta)
        assert float((y - exact(1.0 + theta * dt)).abs().max()) < 1e-11


# ------------------------------------------------------------------------------------------------
# Structure: what the loop passes and gets.


def test_dense_output_reproduces_the_step_ends():
    dt = 0.25
    y0, step, k_full = one_step(dt)
    assert len(step.k) == DOP853.stages == 13 and len(k_full) == 16
    assert torch.equal(continuous_extension(y0, k_full, dt, DOP853.dense_extra, 0.0), y0)
    y1 = continuous_extension(y0, k_full, dt, DOP853.dense_extra, 1.0)
    # Up to the rounding of monomial weights as large as 545 (measured: 2.5e-14 on |y| ~ 2); the loop returns
    # step.y1 itself for an output time at the end of a step.
    torch.testing.assert_close(y1, step.y1, rtol=0, atol=1e-13)


def test_last_stage_is_f_at_the_end_of_the_step_and_reusable():
    # FSAL like dopri5: the 13th stage is f(t1, y1), the next step's f0.
    dt = 0.25
    y0, step, _ = one_step(dt)
    assert DOP853.fsal
    torch.testing.assert_close(step.k[-1], func(T0 + dt, step.y1), rtol=0, atol=0)


def test_dense_stages_cost_three_evaluations_at_their_nodes():
    calls = []

    def counting(t, y):
        calls.append(t)
        return func(t, y)

    dt = 0.25
    y0 = exact(T0)
    step = rk_step(counting, T0, y0, counting(T0, y0), dt, DOP853)
    assert len(calls) == 13  # f0 and 12 new stages (the last one, f(t1, y1), is reused next step)
    calls.clear()
    extra = dense_stages(counting, T0, y0, step.k, dt, DOP853)
    assert len(extra) == 3 and calls == pytest.approx([T0 + c * dt for c in (0.1, 0.2, 7 / 9)], abs=1e-15)


def test_dense_stages_of_other_methods_and_bad_input():
    tab = EXPLICIT_METHODS["dopri5"]
    y0 = exact(T0)
    step = rk_step(func, T0, y0, func(T0, y0), 0.1, tab)
    assert dense_stages(func, T0, y0, step.k, 0.1, tab) == ()
    with pytest.raises(ValueError, match=r"'dopri8' has 13 stages but 7 were given"):
        dense_stages(func, T0, y0, step.k, 0.1, DOP853)


def test_step_result_keeps_its_three_field_form():
    y = torch.zeros(2)
    old = StepResult(y, None, (y,))
    assert old.y_err_aux is None and old.memory is None and old.shrink is None and len(old) == 6
    y0 = exact(T0)
    for name, tab in EXPLICIT_METHODS.items():
        step = rk_step(func, T0, y0, func(T0, y0), 0.1, tab)
        assert (step.y_err_aux is not None) == (name == "dopri8"), name


def test_float32_state():
    dt = 0.1
    y0 = exact(T0).float()

    def f32(t, y):
        return PROBLEM.func(torch.tensor(t, dtype=torch.float32), y)

    step = rk_step(f32, T0, y0, f32(T0, y0), dt, DOP853)
    k_full = step.k + dense_stages(f32, T0, y0, step.k, dt, DOP853)
    y = continuous_extension(y0, k_full, dt, DOP853.dense_extra, 0.5)
    assert y.dtype == torch.float32 and step.y_err_aux.dtype == torch.float32
    assert float((y.double() - exact(T0 + 0.5 * dt)).abs().max()) < 1e-6


# ------------------------------------------------------------------------------------------------
# The combined error ratio.


def test_combined_error_ratio_floats_and_tensors():
    assert combined_error_ratio(0.3) == 0.3 and combined_error_ratio(0.3, None) == 0.3
    assert combined_error_ratio(0.0, 0.0) == 0.0
    assert combined_error_ratio(2.0, 0.0) == pytest.approx(2.0)
    assert combined_error_ratio(1e-6, 1e-2) == pytest.approx(1e-12 / math.sqrt(1e-12 + 1e-6))
    assert combined_error_ratio(math.inf, 1.0) == math.inf and combined_error_ratio(1.0, math.inf) == math.inf
    assert math.isnan(combined_error_ratio(math.nan, 1.0)) and math.isnan(combined_error_ratio(1.0, math.nan))
    e5 = torch.tensor([0.0, 2.0, 1e-6, math.inf, 1.0, math.nan], dtype=F64)
    e3 = torch.tensor([0.0, 0.0, 1e-2, 1.0, math.inf, 1.0], dtype=F64)
    got = combined_error_ratio(e5, e3)
    expected = [combined_error_ratio(float(a), float(b)) for a, b in zip(e5, e3)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), equal_nan=True)


# ------------------------------------------------------------------------------------------------
# Agreement with scipy's DOP853 (the same published coefficients, Hairer's Fortran code).


def test_one_step_matches_scipy_dop853():
    scipy_ivp = pytest.importorskip("scipy.integrate")
    y0 = exact(T0)
    h = 0.125
    solver = scipy_ivp.DOP853(PROBLEM.func_np, T0, y0.numpy().copy(), T0 + 1.0, first_step=h, rtol=1e-3, atol=1e-6)
    solver.step()
    assert solver.status == "running" and solver.t == T0 + h  # accepted at the step size we asked for

    step = rk_step(func, T0, y0, func(T0, y0), h, DOP853)
    np.testing.assert_allclose(step.y1.numpy(), solver.y, rtol=0, atol=1e-14)
    np.testing.assert_allclose(torch.stack(step.k).numpy(), solver.K, rtol=0, atol=1e-13)

    k_full = step.k + dense_stages(func, T0, y0, step.k, h, DOP853)
    dense = solver.dense_output()
    for theta in (0.1, 0.3, 0.5, 0.7, 0.9):
        y = continuous_extension(y0, k_full, h, DOP853.dense_extra, theta)
        np.testing.assert_allclose(y.numpy(), dense(T0 + theta * h), rtol=0, atol=1e-14)

    # Error norm: RMS norms of the scaled estimates, combined, equal scipy's (private) DOP853 error norm.
    scale = 1e-6 + 1e-3 * np.maximum(np.abs(y0.numpy()), np.abs(solver.y))
    estimate = getattr(solver, "_estimate_error_norm", None)
    if estimate is not None:

        def rms(x):
            return float(np.sqrt(np.mean((x.numpy() / scale) ** 2)))

        ours = combined_error_ratio(rms(step.y_err), rms(step.y_err_aux))
        assert ours == pytest.approx(estimate(solver.K, h, scale), rel=1e-10)
