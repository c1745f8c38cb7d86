"""radau9: the 5-stage Radau IIA coefficients built from the nodes, the measured orders, the error control of the
continuous output (``options["dense_error"]``), stiff solves against scipy's Radau at the same tolerance and
option errors. The behaviour shared with radau5 (batches, tuples, float32, events, gradients, bad input) is
tested in test_radau.py for both methods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre

from neuralode import solve
from neuralode.solvers.implicit import IMPLICIT_METHODS
from neuralode.solvers.radau import RADAU9, radau_dense
from tests.problems import robertson, stiff_vdp
from tests.test_radau import ROB_T, _err, _rot, _rot_exact, _scipy, _Tight

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


# --------------------------------------------------------------------------------------------------------------
# Coefficients


def test_nodes_are_the_radau_points_and_the_conditions_hold():
    tab = RADAU9
    assert IMPLICIT_METHODS["radau9"] is tab and tab.stages == 5 and tab.order == 9 and tab.error_order == 5
    c, A, b = tab.c, tab.a, tab.b
    # Radau IIA nodes: the zeros of P_5(2x - 1) - P_4(2x - 1) (Hairer & Wanner II, IV.5), by numpy's Legendre
    # series, independently of the module's companion-matrix-and-Newton construction.
    roots = np.sort(legendre.legroots([0, 0, 0, 0, -1, 1]).real)
    assert np.abs((roots + 1) / 2 - np.array(c)).max() < 1e-14 and c[-1] == 1.0
    # B(9) and not B(10): order exactly 9; C(5): stage order 5.
    for q in range(1, 10):
        assert abs(sum(bi * ci ** (q - 1) for bi, ci in zip(b, c)) - 1.0 / q) < 1e-14
    assert abs(sum(bi * ci**9 for bi, ci in zip(b, c)) - 1.0 / 10.0) > 1e-6
    for i in range(5):
        for q in range(1, 6):
            assert abs(sum(A[i][j] * c[j] ** (q - 1) for j in range(5)) - c[i] ** q / q) < 1e-14


def test_eigen_transformation_has_one_real_and_two_complex_pairs():
    tab = RADAU9
    A = torch.tensor(tab.a, dtype=F64)
    T, Ti = torch.tensor(tab.T, dtype=F64), torch.tensor(tab.T_inv, dtype=F64)
    Lam = torch.zeros(5, 5, dtype=F64)
    Lam[0, 0] = tab.gamma
    for k, (al, be) in enumerate(tab.pairs):
        i = 1 + 2 * k
        Lam[i, i] = Lam[i + 1, i + 1] = al
        Lam[i, i + 1], Lam[i + 1, i] = -be, be
    Ainv = torch.linalg.inv(A)
    assert float((T @ Lam @ Ti - Ainv).abs().max()) < 1e-12 * float(Ainv.abs().max())
    eig = sorted(torch.linalg.eigvals(Ainv).tolist(), key=lambda z: (z.real, z.imag))
    mine = sorted([complex(tab.gamma)] + [complex(al, s * be) for al, be in tab.pairs for s in (1, -1)],
                  key=lambda z: (z.real, z.imag))
    assert max(abs(x - y) for x, y in zip(eig, mine)) < 1e-12
    assert len(tab.pairs) == 2 and all(be > 0 for _, be in tab.pairs)


def test_embedded_solution_has_order_five_exactly():
    tab, s = RADAU9, 5
    b_hat = [bi + sum(tab.e[j] * tab.a[j][i] for j in range(s)) for i, bi in enumerate(tab.b)]
    g0 = 1.0 / tab.gamma
    res = [(g0 if q == 1 else 0.0) + sum(w * ci ** (q - 1) for w, ci in zip(b_hat, tab.c)) - 1.0 / q
           for q in range(1, 8)]
    assert max(abs(r) for r in res[:5]) < 1e-12 and abs(res[5]) > 1e-5


# --------------------------------------------------------------------------------------------------------------
# Orders


class _TightLoose(_Tight):
    """Newton to rounding (absolute 1e-13) with the ``rtol`` that makes RADAU's Newton tolerance, ``rtol^(2/3)``
    tolerance units for 5 stages, reachable above rounding."""

    rtol = 1e-3


def _one_step(h: float):
    from neuralode.solvers.implicit_options import RadauOptions
    from neuralode.solvers.problem import _Problem
    from neuralode.solvers.radau import make_stepper
    from neuralode.solvers.solution import SolverStats

    y0 = _rot_exact(0.0)
    problem = _Problem(_rot, (y0,), False, SolverStats())
    take = make_stepper(problem, RADAU9, False, RadauOptions(dense_error=False), problem, _TightLoose())
    return take(0.0, 0.0, y0, None, h)[1]


def test_local_orders_of_the_step_its_error_estimate_and_dense_output():
    """One step from the exact solution: ``y1`` has local error ``O(h^10)`` (order 9; measured slope 10.4), the
    error estimate ``O(h^6)`` (embedded order 5; 6.5), the collocation polynomial ``O(h^6)`` inside the step
    (stage order 5; 6.4)."""
    hs = [0.5, 0.4, 0.32, 0.25]
    local, est, mid = [], [], []
    for h in hs:
        step = _one_step(h)
        assert step.y1 is not step.k[0] and step.y_err.abs().max() < 1.0  # Newton converged
        local.append(float((step.y1 - _rot_exact(h)).abs().max()))
        est.append(float(step.y_err.abs().max()))
        mid.append(float((radau_dense(_rot_exact(0.0), step.k, RADAU9, 0.5) - _rot_exact(h / 2)).abs().max()))
    for errors, order in ((local, 10), (est, 6), (mid, 6)):
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
    e_on, e_off, e_land, e_sp = (_err(ys, ref, scale) for ys in (on.ys.numpy(), off.ys.numpy(), landing.ys.numpy(),
                                                                   ys_sp))
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
