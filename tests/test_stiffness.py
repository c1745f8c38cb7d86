"""Stiffness detection in the explicit adaptive methods: stiff problems stop with a SolverError naming the
stiff methods; non-stiff solves are unchanged (same steps, same evaluations, same numbers)."""

from __future__ import annotations

import re

import pytest
import torch

from neuralode import METHODS, AdaptiveOptions, SolverError, solve
from neuralode.solvers.control.stiffness import (
    MIN_STEPS_FOR_ERROR,
    STIFF_STEPS,
    StiffnessDetector,
    _stability_function,
    stability_boundary,
)
from neuralode.solvers.methods.tableau import EXPLICIT_METHODS
from tests.problems import PROBLEMS

F64 = torch.float64
WATCHED = [
    name for name in EXPLICIT_METHODS if StiffnessDetector.for_solve(METHODS[name], AdaptiveOptions()) is not None
]


def test_watched_methods():
    assert WATCHED == ["dopri5", "tsit5", "dopri8", "dopri8_13m"]


@pytest.mark.parametrize("name", WATCHED)
def test_stability_boundary_is_where_R_leaves_the_unit_disc(name):
    tab = EXPLICIT_METHODS[name]
    x = stability_boundary(tab)
    assert abs(_stability_function(tab, complex(-x, 0))) <= 1 + 1e-12
    assert abs(_stability_function(tab, complex(-x - 2e-3, 0))) > 1
    if name == "dopri5":
        assert 3.30 < x < 3.31  # Hairer's DOPRI5 uses 3.25 (= 0.98 x)


def _vdp(mu):
    def f(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    return f


@pytest.mark.parametrize("name", ["dopri5", "tsit5", "dopri8"])
def test_stiff_problem_raises_naming_the_stiff_methods(name):
    with pytest.raises(SolverError) as info:
        solve(
            _vdp(1e4),
            torch.tensor([2.0, 0.0], dtype=F64),
            torch.tensor([0.0, 3e4], dtype=F64),
            method=name,
            rtol=1e-6,
            atol=1e-8,
        )
    err = info.value
    assert re.match(
        rf"The problem is stiff: {name}'s step is held at its stability limit \(\|h\| rho = [0-9.]+, "
        r"boundary [0-9.]+\) for [0-9]+ steps at t=",
        str(err),
    )
    assert "Use a stiff method: method='rodas5p'" in str(err)
    assert err.n_steps == MIN_STEPS_FOR_ERROR  # found early, not after the user has waited for 1e8 steps


def test_short_solve_with_a_stability_limited_end_finishes():
    """y' = -y to t = 20 at rtol 1e-3: the decayed solution lets the step grow to the stability limit for the
    last steps (Hairer's test calls that stiff), but the solve ends in a few more and must not fail."""
    sol = solve(
        lambda t, y: -y,
        torch.ones(1, dtype=F64),
        torch.tensor([0.0, 20.0], dtype=F64),
        method="tsit5",
        rtol=1e-3,
        atol=1e-3,
    )
    assert sol.stats.n_accepted < MIN_STEPS_FOR_ERROR


def test_stiffness_off_runs_on():
    sol = solve(
        _vdp(1e3),
        torch.tensor([2.0, 0.0], dtype=F64),
        torch.tensor([0.0, 1.0], dtype=F64),
        method="dopri5",
        rtol=1e-6,
        atol=1e-8,
        options={"stiffness": "off"},
    )
    assert sol.stats.n_accepted > 100
    with pytest.raises(ValueError, match=re.escape("options['stiffness'] must be 'error' or 'off'; got 'warn'.")):
        solve(
            _vdp(1.0),
            torch.tensor([2.0, 0.0], dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            options={"stiffness": "warn"},
        )


@pytest.mark.parametrize("name", WATCHED)
@pytest.mark.parametrize("problem", ["kepler", "vdp", "batched"])
def test_non_stiff_solves_are_unchanged(name, problem):
    """The check costs no evaluation of func and changes no step: same nfe, steps and numbers with it off."""
    p = PROBLEMS[problem]
    t = p.times(5)
    calls = {"on": 0, "off": 0}

    def counted(key):
        def f(tt, y):
            calls[key] += 1
            return p.func(tt, y)

        return f

    on = solve(counted("on"), p.y0, t, method=name, rtol=1e-8, atol=1e-10)
    off = solve(counted("off"), p.y0, t, method=name, rtol=1e-8, atol=1e-10, options={"stiffness": "off"})
    assert calls["on"] == calls["off"] == on.stats.nfe == off.stats.nfe
    assert on.stats.n_accepted == off.stats.n_accepted and on.stats.n_rejected == off.stats.n_rejected
    assert torch.equal(on.ys, off.ys)


# ---------------------------------------------------------------------------------------------------------------
# method="auto": tsit5 <-> rodas5p.


@pytest.mark.parametrize("problem", ["kepler", "vdp", "lotka", "batched", "riccati"])
def test_auto_is_tsit5_on_non_stiff_problems(problem):
    p = PROBLEMS[problem]
    t = p.times(7)
    auto = solve(p.func, p.y0, t, method="auto", rtol=1e-8, atol=1e-10)
    tsit5 = solve(p.func, p.y0, t, method="tsit5", rtol=1e-8, atol=1e-10)
    assert auto.stats.nfe == tsit5.stats.nfe  # the issue allows 10% more; switching costs none here
    assert auto.stats.n_jac_evals == 0
    assert torch.equal(auto.ys, tsit5.ys)


def _robertson(t, y):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2], dim=-1)


def test_auto_switches_to_rodas5p_on_a_stiff_problem():
    t = torch.tensor([0.0, 1e-3, 1.0, 1e2], dtype=F64)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    auto = solve(_robertson, y0, t, method="auto", rtol=1e-6, atol=1e-12)
    ref = solve(_robertson, y0, t, method="rodas5p", rtol=1e-9, atol=1e-15)
    st = auto.stats
    assert 0 < st.n_jac_evals < st.n_accepted  # both methods took steps: tsit5 first, then rodas5p
    assert st.n_accepted < 400  # tsit5 alone would stop with "The problem is stiff"
    units = (auto.ys - ref.ys).abs() / (1e-12 + 1e-6 * ref.ys.abs())
    assert float(units.max()) < 50


def test_auto_switches_back_when_stiffness_goes_away():
    """Van der Pol, mu = 1000: stiff on the slow branches, not in the fast jumps between them. A solve that
    never switched back would form a Jacobian on every step after the first switch."""
    mu = 1000.0

    def vdp(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    t = torch.tensor([0.0, 500.0, 1000.0], dtype=F64)  # the first fast jump is near t = 807
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    ref = solve(vdp, y0, t, method="rodas5p", rtol=1e-8, atol=1e-8)
    explicit_times = []  # the start of every tsit5 step attempt
    from neuralode.solvers.methods import auto as auto_module

    original = auto_module.rk_step

    def counting(func, t0, *args, **kwargs):
        explicit_times.append(t0)
        return original(func, t0, *args, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(auto_module, "rk_step", counting)
    try:
        auto = solve(vdp, y0, t, method="auto", rtol=1e-6, atol=1e-6)
    finally:
        patch.undo()
    assert len(explicit_times) >= STIFF_STEPS  # tsit5 first, until the test finds the problem stiff
    # rodas5p on the slow branch from t ~ 0 on; tsit5 again in the fast jump near t = 807:
    assert any(t > 700.0 for t in explicit_times), max(explicit_times)
    assert any(t < 1.0 for t in explicit_times)
    assert 0 < auto.stats.n_jac_evals < auto.stats.n_accepted
    assert float((auto.ys[:, 0] - ref.ys[:, 0]).abs().max()) < 1e-3


def test_auto_costs_within_ten_percent_of_tsit5_on_detest():
    from benchmarks.detest import PROBLEMS as DETEST
    from benchmarks.detest import detest_names

    total = {"auto": 0, "tsit5": 0}
    for rtol in (1e-3, 1e-6):
        for name in detest_names():
            p = DETEST[name]
            t = torch.tensor([0.0, p.t_end], dtype=F64)
            nfe = {m: solve(p.rhs, p.y0_tensor(), t, method=m, rtol=rtol, atol=rtol).stats.nfe for m in total}
            assert nfe["auto"] <= 1.25 * nfe["tsit5"], (name, rtol, nfe)
            for m in total:
                total[m] += nfe[m]
    assert total["auto"] <= 1.1 * total["tsit5"], total


def test_auto_switches_when_hairers_estimate_underreads_the_stiffness():
    """Robertson at rtol 1e-8: tsit5 sits at its stability limit from t ~ 0.1 on while Hairer's estimate
    reads |h| rho ~ 0.06-0.5 of the boundary (it took ~5800 explicit steps to fire, to t ~ 8.6). The
    power-iteration probe on stalled steps finds |h lambda| near the boundary and switches within
    PROBE_EVERY steps of the stall."""
    from neuralode.solvers.methods.auto import PROBE_EVERY

    t = torch.tensor([0.0, 1e-3, 1.0, 10.0], dtype=F64)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    auto = solve(_robertson, y0, t, method="auto", rtol=1e-8, atol=1e-14)
    rodas = solve(_robertson, y0, t, method="rodas5p", rtol=1e-8, atol=1e-14)
    ref = solve(_robertson, y0, t, method="rodas5p", rtol=1e-10, atol=1e-16)
    assert auto.stats.n_accepted < rodas.stats.n_accepted + 3 * PROBE_EVERY, (auto.stats, rodas.stats)
    assert auto.stats.nfe < 2 * rodas.stats.nfe
    units = (auto.ys - ref.ys).abs() / (1e-14 + 1e-8 * ref.ys.abs())
    assert float(units.max()) < 100


def test_auto_switching_refuses_an_explicit_method_without_estimate_or_dense_output():
    """auto's explicit half must carry an error estimate (the controller) and its own dense output (auto_dense
    interpolates tsit5's steps with it): a record without either is refused on construction, naming it."""
    import dataclasses

    from neuralode.solvers.methods.auto import AutoSwitching
    from neuralode.solvers.methods.tableau import RK4, TSIT5

    with pytest.raises(ValueError, match="rk4 has no b_err"):
        AutoSwitching(explicit=RK4)
    no_dense = dataclasses.replace(TSIT5, name="tsit5_no_dense", dense=None, dense_order=None)
    assert no_dense.b == TSIT5.b and no_dense.dense is None
    with pytest.raises(ValueError, match="tsit5_no_dense has no dense"):
        AutoSwitching(explicit=no_dense)
    assert AutoSwitching().explicit is TSIT5


def test_a_method_stepped_by_the_loop_has_no_driver_of_its_own():
    """Method.run is the own-driver methods' (scipy_solver) whole solve; a method the loop steps refuses it."""
    with pytest.raises(NotImplementedError, match="'dopri5' has no driver of its own"):
        METHODS["dopri5"].run(None, None, None, None, 1e-6, 1e-8, None)
