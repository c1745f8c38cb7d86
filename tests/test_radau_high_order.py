"""radau9 and radau13: the 5- and 7-stage Radau IIA coefficients built from the nodes, the measured orders, the
error control of the continuous output (``options["dense_error"]``) against scipy's Radau, and option errors.
What they share with radau5 (Robertson against scipy's Radau, batches, tuples, float32, events, gradients, bad
input) is tested in test_radau.py for all three."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre

from neuralode import solve
from neuralode.solvers.methods.radau import RADAU9, RADAU13, radau_dense
from neuralode.solvers.methods.registry import IMPLICIT_METHODS
from tests.problems import robertson, stiff_vdp
from tests.test_radau import ROB_T, _err, _rot, _rot_exact, _scipy, _Tight

F64 = torch.float64


# --------------------------------------------------------------------------------------------------------------
# Coefficients


HIGH = [(RADAU9, 5), (RADAU13, 7)]


@pytest.mark.parametrize("tab, s", HIGH)
def test_nodes_are_the_radau_points_and_the_conditions_hold(tab, s):
    assert IMPLICIT_METHODS[tab.name] is tab and tab.stages == s and tab.order == 2 * s - 1 and tab.error_order == s
    c, A, b = tab.c, tab.a, tab.b
    # Radau IIA nodes: the zeros of P_s(2x - 1) - P_{s-1}(2x - 1) (Hairer & Wanner II, IV.5), by numpy's
    # Legendre series, independently of the module's companion-matrix-and-Newton construction.
    roots = np.sort(legendre.legroots([0] * (s - 1) + [-1, 1]).real)
    assert np.abs((roots + 1) / 2 - np.array(c)).max() < 1e-14 and c[-1] == 1.0
    # B(2s - 1) and not B(2s): order exactly 2s - 1; C(s): stage order s (with D(s - 1), which collocation at
    # the Radau points gives, these make the order 2s - 1; Hairer & Wanner II, IV.5).
    for q in range(1, 2 * s):
        assert abs(sum(bi * ci ** (q - 1) for bi, ci in zip(b, c)) - 1.0 / q) < 1e-13
    assert abs(sum(bi * ci ** (2 * s - 1) for bi, ci in zip(b, c)) - 1.0 / (2 * s)) > 1e-9
    for i in range(s):
        for q in range(1, s + 1):
            assert abs(sum(A[i][j] * c[j] ** (q - 1) for j in range(s)) - c[i] ** q / q) < 1e-13
    for j in range(s):  # D(s - 1): sum_i b_i c_i^(q-1) a_ij = b_j (1 - c_j^q) / q
        for q in range(1, s):
            assert abs(sum(b[i] * c[i] ** (q - 1) * A[i][j] for i in range(s)) - b[j] * (1 - c[j] ** q) / q) < 1e-13


@pytest.mark.parametrize("tab, s", HIGH)
def test_eigen_transformation_has_one_real_eigenvalue_and_complex_pairs(tab, s):
    A = torch.tensor(tab.a, dtype=F64)
    T, Ti = torch.tensor(tab.T, dtype=F64), torch.tensor(tab.T_inv, dtype=F64)
    Lam = torch.zeros(s, s, dtype=F64)
    Lam[0, 0] = tab.gamma
    for k, (al, be) in enumerate(tab.pairs):
        i = 1 + 2 * k
        Lam[i, i] = Lam[i + 1, i + 1] = al
        Lam[i, i + 1], Lam[i + 1, i] = -be, be
    Ainv = torch.linalg.inv(A)
    assert float((T @ Lam @ Ti - Ainv).abs().max()) < 1e-12 * float(Ainv.abs().max())
    eig = sorted(torch.linalg.eigvals(Ainv).tolist(), key=lambda z: (z.real, z.imag))
    mine = sorted(
        [complex(tab.gamma)] + [complex(al, s * be) for al, be in tab.pairs for s in (1, -1)],
        key=lambda z: (z.real, z.imag),
    )
    assert max(abs(x - y) for x, y in zip(eig, mine)) < 1e-12
    assert len(tab.pairs) == (s - 1) // 2 and all(be > 0 for _, be in tab.pairs)


@pytest.mark.parametrize("tab, s", HIGH)
def test_embedded_solution_has_order_s_exactly(tab, s):
    b_hat = [bi + sum(tab.e[j] * tab.a[j][i] for j in range(s)) for i, bi in enumerate(tab.b)]
    g0 = 1.0 / tab.gamma
    res = [
        (g0 if q == 1 else 0.0) + sum(w * ci ** (q - 1) for w, ci in zip(b_hat, tab.c)) - 1.0 / q
        for q in range(1, s + 3)
    ]
    assert max(abs(r) for r in res[:s]) < 1e-11 and abs(res[s]) > 1e-6


# --------------------------------------------------------------------------------------------------------------
# Orders


class _TightLoose(_Tight):
    """Newton to rounding (absolute 1e-13) with an ``rtol`` that puts RADAU's Newton tolerance at its cap, 0.03
    tolerance units, above rounding."""

    rtol = 1e-2


def _one_step(h: float, tab=RADAU9):
    from neuralode.solvers.methods.implicit_options import RadauOptions, RadauSettings
    from neuralode.solvers.methods.radau import make_stepper
    from neuralode.solvers.problem import _Problem
    from neuralode.solvers.solution import SolverStats

    y0 = _rot_exact(0.0)
    problem = _Problem(_rot, (y0,), False, SolverStats())
    take = make_stepper(
        problem, tab, False, RadauOptions(method=RadauSettings(dense_error=False)), problem, _TightLoose()
    )
    return take(0.0, 0.0, y0, None, h)[1]


@pytest.mark.parametrize(
    "tab, hs, orders", [(RADAU9, [0.5, 0.4, 0.32, 0.25], (10, 6, 6)), (RADAU13, [0.8, 0.7, 0.6, 0.5], (None, 8, 8))]
)
def test_local_orders_of_the_step_its_error_estimate_and_dense_output(tab, hs, orders):
    """One step from the exact solution: for radau9, ``y1`` has local error ``O(h^10)`` (order 9; measured slope
    10.4), the error estimate ``O(h^6)`` (embedded order 5; 6.5), the collocation polynomial ``O(h^6)`` inside
    the step (stage order 5; 6.4). radau13: the estimate and the polynomial ``O(h^8)`` (8.3, 8.5); its step's
    ``O(h^14)`` falls to Newton's and rounding's 1e-14 before it can be measured (5.7e-13 at h = 0.8)."""
    local, est, mid = [], [], []
    for h in hs:
        step = _one_step(h, tab)
        local.append(float((step.y1 - _rot_exact(h)).abs().max()))
        est.append(float(step.y_err.abs().max()))
        mid.append(float((radau_dense(_rot_exact(0.0), step.k, tab, 0.5) - _rot_exact(h / 2)).abs().max()))
    assert max(local) < 1e-9  # Newton converged on every step (a failed step returns y0: an O(h) error)
    for errors, order in zip((local, est, mid), orders):
        if order is not None:
            slope = float(np.polyfit(np.log(hs), np.log(errors), 1)[0])
            assert abs(slope - order) < 0.7, (order, errors, slope)


# --------------------------------------------------------------------------------------------------------------
# The continuous output's error (Robertson against scipy's Radau: test_radau.py)


def test_dense_error_keeps_the_outputs_between_steps_within_the_tolerance():
    """Van der Pol mu = 1000 at rtol 1e-7 with 9 outputs: without ``dense_error`` the step ends are accurate but
    the outputs read between them from the degree-5 polynomial carry the error (in the stiff component); with
    it (the default) the outputs are as accurate as step ends, still in far fewer steps than scipy's Radau."""
    f, f_np, jac_np = stiff_vdp(1000.0)
    times = np.linspace(0.0, 2000.0, 9)
    ref = _scipy(f_np, jac_np, [2.0, 0.0], times, 1e-12, 1e-15)[0]
    rtol, scale = 1e-7, 1e-3
    y0, t = torch.tensor([2.0, 0.0], dtype=F64), torch.tensor(times, dtype=F64)
    kw = dict(rtol=rtol, atol=rtol * scale, method="radau9")
    on = solve(f, y0, t, **kw)
    off = solve(f, y0, t, **kw, options={"dense_error": False})
    landing = solve(f, y0, t, **kw, options={"dense_error": False, "step_t": [float(x) for x in times[1:-1]]})
    ys_sp, steps_sp = _scipy(f_np, jac_np, [2.0, 0.0], times, rtol, rtol * scale)
    e_on, e_off, e_land, e_sp = (
        _err(ys, ref, scale) for ys in (on.ys.numpy(), off.ys.numpy(), landing.ys.numpy(), ys_sp)
    )
    # Measured: on 1.3e-9 in 488 steps; off 1.2e-7 in 313, landing on the outputs 1.1e-10; scipy 2.6e-8 in 1541.
    assert e_off > 10 * e_land, (e_off, e_land)
    assert e_on <= 0.2 * e_sp and on.stats.n_accepted <= 0.5 * steps_sp, (e_on, e_sp, on.stats.n_accepted, steps_sp)
    assert off.stats.n_accepted < on.stats.n_accepted
    assert on.stats.nfe == solve(f, y0, t, **kw, options={"dense_error": True}).stats.nfe  # the default is on


def test_dense_error_is_off_by_default_for_radau5():
    y0, t = torch.tensor([1.0, 0.0, 0.0], dtype=F64), torch.tensor(ROB_T, dtype=F64)
    kw = dict(rtol=1e-6, atol=1e-12, method="radau5")
    default, on = solve(robertson, y0, t, **kw), solve(robertson, y0, t, **kw, options={"dense_error": True})
    assert default.stats.nfe == solve(robertson, y0, t, **kw, options={"dense_error": False}).stats.nfe
    # Measured: 206 accepted steps by default, 489 with dense_error (the degree-2 yardstick is strict for 3 stages).
    assert on.stats.n_accepted > default.stats.n_accepted


# --------------------------------------------------------------------------------------------------------------
# Options


def test_dense_error_option_is_checked():
    y0, t = torch.tensor([1.0, 0.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"options\['dense_error'\] must be True, False or None; got 'yes'"):
        solve(robertson, y0, t, method="radau9", options={"dense_error": "yes"})
    with pytest.raises(ValueError, match="Unknown option 'dense_error' for method 'rodas5p'"):
        solve(robertson, y0, t, method="rodas5p", options={"dense_error": True})
    assert math.isfinite(float(solve(robertson, y0, t, method="radau9", options={"dense_error": None}).ys.sum()))
