"""Gustafsson's predictive step-size controller (``options={"controller": "gustafsson"}``, and the stiff
methods' default ``"pi_gustafsson"``, the same cap on PI).

The formula on hand-made sequences (against the closed form and against the error model it is derived
from), the option's validation, a stiff solve against scipy's Radau, and what the controller is for: fewer
rejected steps than PI or I control on Van der Pol with mu = 1000.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from neuralode import solve
from neuralode.solvers.control.controller import GUSTAFSSON_MIN_PREV_RATIO, ControllerState, StepSizeController
from tests.problems import robertson as _robertson
from tests.problems import robertson_jac_np as _robertson_jac_np
from tests.problems import robertson_np as _robertson_np
from tests.problems import stiff_vdp as _vdp

F64 = torch.float64
SAFETY, IFACTOR, DFACTOR = 0.9, 10.0, 0.2


def _gus(k: int = 5, **kw) -> StepSizeController:
    params = dict(safety=SAFETY, ifactor=IFACTOR, dfactor=DFACTOR, order=k) | kw
    return StepSizeController("gustafsson", **params)


def _i(k: int = 5) -> StepSizeController:
    return StepSizeController("i", SAFETY, IFACTOR, DFACTOR, k)


def propose(ctrl, dt, ratio, prev_ratio, after_reject, prev_dt=math.nan):
    """``ctrl.adapt`` from the memory ``(prev_ratio, after_reject, prev_dt)``: ``(accept, next dt)``."""
    accept, nxt, _ = ctrl.adapt(ControllerState(prev_ratio, after_reject, prev_dt), dt, ratio)
    return accept, nxt


# ---------------------------------------------------------------------------------------------------------------
# The formula.


@pytest.mark.parametrize(
    "dt,ratio,prev_ratio,prev_dt,k",
    [
        (0.1, 0.5, 0.1, 0.1, 5),  # error constant growing: the prediction is the smaller
        (0.1, 0.9, 0.05, 0.2, 4),
        (-0.3, 0.7, 0.2, -0.25, 3),  # integrating backwards
        (2.0, 0.3, 0.9, 1.0, 5),  # error constant shrinking: the I proposal is the smaller
        (0.1, 1e-3, 1e-6, 0.1, 5),  # previous ratio below RADAU5's floor
    ],
)
def test_accepted_step_is_the_smaller_of_the_i_and_predictive_proposals(dt, ratio, prev_ratio, prev_dt, k):
    accept, nxt = propose(_gus(k), dt, ratio, prev_ratio, False, prev_dt)
    i_factor = SAFETY * ratio ** (-1 / k)
    pred_factor = SAFETY * (dt / prev_dt) * (max(prev_ratio, 1e-2) / ratio**2) ** (1 / k)
    expected = min(IFACTOR, max(DFACTOR, min(i_factor, pred_factor)))
    assert accept
    assert math.isclose(nxt, dt * expected, rel_tol=1e-13)
    assert math.copysign(1.0, nxt) == math.copysign(1.0, dt)


@pytest.mark.parametrize(
    "dt,ratio,prev_ratio,prev_dt", [(0.1, 0.5, 0.1, 0.1), (2.0, 0.3, 0.9, 1.0), (-0.3, 0.7, 0.2, -0.25)]
)
def test_pi_gustafsson_is_the_smaller_of_the_pi_and_predictive_proposals(dt, ratio, prev_ratio, prev_dt):
    k = 5
    accept, nxt = propose(
        StepSizeController("pi_gustafsson", SAFETY, IFACTOR, DFACTOR, k), dt, ratio, prev_ratio, False, prev_dt
    )
    pi_factor = SAFETY * ratio ** (-0.85 / k) * prev_ratio ** (0.2 / k)
    pred_factor = SAFETY * (dt / prev_dt) * (max(prev_ratio, 1e-2) / ratio**2) ** (1 / k)
    assert accept and math.isclose(nxt, dt * min(IFACTOR, max(DFACTOR, min(pi_factor, pred_factor))), rel_tol=1e-13)
    # Without a previous accepted step it is PI control.
    pi = StepSizeController("pi", SAFETY, IFACTOR, DFACTOR, k)
    assert propose(
        StepSizeController("pi_gustafsson", SAFETY, IFACTOR, DFACTOR, k), dt, ratio, prev_ratio, False
    ) == propose(pi, dt, ratio, prev_ratio, False)


def test_the_two_branches_are_both_taken():
    # Growing error constant: phi_n = 0.5 / 0.1^5 > phi_{n-1} = 0.1 / 0.1^5, the prediction cuts the step.
    _, grow = propose(_gus(), 0.1, 0.5, 0.1, False, 0.1)
    _, i_grow = propose(_i(), 0.1, 0.5, 0.1, False, 0.1)
    assert grow < 0.8 * i_grow
    # Shrinking error constant: the I proposal.
    _, shrink = propose(_gus(), 0.1, 0.3, 0.9, False, 0.1)
    _, i_shrink = propose(_i(), 0.1, 0.3, 0.9, False, 0.1)
    assert shrink == i_shrink


def test_prediction_is_exact_for_a_geometric_error_constant():
    """The model behind the formula: r_n = phi_n h_n^k with phi_n = phi_0 q^n. Given the last two accepted
    steps, the predicted step h_{n+1} makes phi_{n+1} h_{n+1}^k = safety^k exactly (when the prediction is
    the smaller proposal and not clipped)."""
    k, q = 5, 2.0
    for h_prev, h in [(0.1, 0.11), (0.05, 0.04), (0.2, 0.2)]:
        phi0 = 0.2 / h_prev**k  # r_{n-1} = 0.2
        r_prev, r = phi0 * h_prev**k, phi0 * q * h**k
        accept, h_next = propose(_gus(k), h, r, r_prev, False, h_prev)
        assert accept and r_prev >= GUSTAFSSON_MIN_PREV_RATIO and DFACTOR < h_next / h < IFACTOR
        assert math.isclose(phi0 * q**2 * h_next**k, SAFETY**k, rel_tol=1e-12)


def test_first_step_rejections_and_limits_are_i_control():
    g, i = _gus(), _i()
    # No previous accepted step: I control.
    assert propose(g, 0.1, 0.5, 1.0, False) == propose(i, 0.1, 0.5, 1.0, False)
    assert propose(g, 0.1, 0.5, 1.0, False, math.nan) == propose(i, 0.1, 0.5, 1.0, False)
    # Rejected: I control whatever the history, and never growing.
    assert propose(g, 0.1, 3.0, 0.01, False, 0.01) == propose(i, 0.1, 3.0, 0.01, False)
    accept, nxt = propose(g, 0.1, 1.5, 0.5, False, 0.1)
    assert not accept and nxt < 0.1
    # Accepted right after a rejection: no growth.
    accept, nxt = propose(g, 0.1, 1e-4, 0.9, True, 0.1)
    assert accept and nxt == pytest.approx(0.1, rel=1e-15)
    # Clipped to [dfactor, ifactor]; zero, tiny and non-finite ratios.
    assert propose(g, 0.1, 0.0, 0.5, False, 0.1) == (True, 0.1 * IFACTOR)
    accept, nxt = propose(g, 0.1, 1e-300, 0.5, False, 0.1)
    assert accept and nxt == pytest.approx(0.1 * IFACTOR)
    assert propose(g, 0.1, 0.99, 0.01, False, 1.0)[1] == pytest.approx(0.1 * DFACTOR)  # prediction far below
    assert propose(g, 0.1, math.inf, 0.5, False, 0.1) == (False, 0.1 * DFACTOR)
    assert propose(g, 0.1, math.nan, 0.5, False, 0.1) == (False, 0.1 * DFACTOR)


# ---------------------------------------------------------------------------------------------------------------
# The option.


def test_option_is_validated():
    y0, t = torch.tensor([1.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(
        ValueError, match=r"^options\['controller'\] must be one of pi, i, gustafsson, pi_gustafsson; got 'pid'\.$"
    ):
        solve(lambda t, y: -y, y0, t, method="rodas5p", options={"controller": "pid"})


def test_defaults_pi_gustafsson_for_stiff_methods_and_pi_otherwise():
    from neuralode.solvers.methods.registry import resolve
    from neuralode.solvers.options import _parse_options

    for method, expected in [
        ("rodas5p", "pi_gustafsson"),
        ("kvaerno5", "pi_gustafsson"),
        ("rosenbrock23", "pi_gustafsson"),
        ("radau5", "pi_gustafsson"),
        ("radau9", "pi_gustafsson"),
        ("radau13", "pi_gustafsson"),
        ("auto", "pi"),
        ("dopri5", "pi"),
        ("tsit5", "pi"),
    ]:
        assert _parse_options(None, resolve(method)).controller == expected, method
        assert _parse_options({"max_step": 1.0}, resolve(method)).controller == expected, method
    assert _parse_options({"controller": "gustafsson"}, resolve("rodas5p")).controller == "gustafsson"
    assert _parse_options({"controller": "pi"}, resolve("rodas5p")).controller == "pi"


def test_explicit_method_with_gustafsson_matches_closed_form():
    y0, t = torch.tensor([1.0, 0.0], dtype=F64), torch.linspace(0, 10, 11, dtype=F64)

    def rot(t, y):
        return torch.stack([-y[1], y[0]])

    sol = solve(rot, y0, t, rtol=1e-8, atol=1e-10, method="dopri5", options={"controller": "gustafsson"})
    exact = torch.stack([torch.cos(t), torch.sin(t)], dim=-1)
    assert (sol.ys - exact).abs().max() < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Stiff solves.


def test_robertson_against_radau():
    """RADAU5's controller on rodas5p at a tight tolerance (the default, pi_gustafsson, is checked the same way
    in test_stiff.py)."""
    times = [0.0, 1e-4, 1e-2, 1.0, 1e2]
    ref = solve_ivp(
        _robertson_np,
        (0.0, times[-1]),
        [1.0, 0.0, 0.0],
        method="Radau",
        t_eval=times,
        rtol=1e-12,
        atol=1e-16,
        jac=_robertson_jac_np,
    ).y.T
    rtol, atol = 1e-8, 1e-14
    sol = solve(
        _robertson,
        torch.tensor([1.0, 0.0, 0.0], dtype=F64),
        torch.tensor(times, dtype=F64),
        rtol=rtol,
        atol=atol,
        method="rodas5p",
        options={"controller": "gustafsson"},
    )
    # The global error in units of the tolerance atol + rtol |y| (as in test_stiff.py).
    units = np.abs(sol.ys.numpy() - ref) / (atol + rtol * np.abs(ref))
    assert units.max() < 30.0, units.max()
    assert sol.stats.n_accepted < 1000


def test_fewer_rejections_than_pi_and_i_on_van_der_pol_mu_1000():
    """What the predictive controller is for. Over one period of Van der Pol mu = 1000 the step size
    collapses by orders of magnitude at each fast transition; PI and I control find each collapse by
    rejected steps, the prediction shrinks the step as the error constant starts to grow. Measured
    (rodas5p, rtol = atol = 1e-4, t in [0, 1000], one transition): 10 rejected steps against PI's 38 and
    I's 42, nfe 755 against 969 and 961.
    """
    f, f_np, jac_np = _vdp(1000.0)
    times = [0.0, 1000.0]
    ref = solve_ivp(
        f_np, (0.0, 1000.0), [2.0, 0.0], method="Radau", t_eval=times, rtol=1e-11, atol=1e-11, jac=jac_np
    ).y.T
    stats, errs = {}, {}
    for c in ("pi", "i", "gustafsson"):
        sol = solve(
            f,
            torch.tensor([2.0, 0.0], dtype=F64),
            torch.tensor(times, dtype=F64),
            rtol=1e-4,
            atol=1e-4,
            method="rodas5p",
            options={"controller": c},
        )
        stats[c] = sol.stats
        errs[c] = float((np.abs(sol.ys.numpy() - ref) / np.array([1.0, 1e-3])).max())
    g = stats["gustafsson"]
    assert g.n_rejected < stats["pi"].n_rejected / 2 and g.n_rejected < stats["i"].n_rejected / 2, {
        c: s.n_rejected for c, s in stats.items()
    }
    assert g.nfe < stats["pi"].nfe and g.nfe < stats["i"].nfe
    assert errs["gustafsson"] < 1e-2, errs
