"""``neuralode.METHODS``: every name ``solve`` accepts, each of which solves, and nothing else.

The registry (:mod:`neuralode.solvers.methods.registry`) maps each name to its Method, built from the families'
coefficient records, so a method added to any family is listed, and by :func:`test_every_method_solves_decay`
run, with no new test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch

import neuralode
from neuralode import METHODS, solve
from neuralode._impl.odeint import SOLVERS
from neuralode.solvers.methods import Method
from neuralode.solvers.methods.adams import ADAMS_METHODS
from neuralode.solvers.methods.registry import IMPLICIT_METHODS
from neuralode.solvers.methods.tableau import EXPLICIT_METHODS

F64 = torch.float64
STEP = 1 / 16  # fixed-step methods: y' = -y on [0, 1] in 16 steps
RTOL, ATOL = 1e-6, 1e-9  # adaptive methods
ADAPTIVE_TOL = 1e-4
# Options a method needs to be accurate on this problem: at the default max_order the order of explicit_adams
# rises to 10, where Adams-Bashforth is unstable even on decay for small steps (as torchdiffeq 0.2.5's is); capped,
# its order rises to 4.
EXTRA_OPTIONS = {"explicit_adams": {"max_order": 5}}


def decay(t, y):
    return -y


def test_methods_lists_every_family():
    """Every family's registry, ``auto`` and ``scipy_solver`` are in ``METHODS``, and nothing else is."""
    assert isinstance(METHODS, Mapping)
    families = [*EXPLICIT_METHODS, *IMPLICIT_METHODS, "auto", *ADAMS_METHODS, "scipy_solver"]
    assert list(METHODS) == families and len(METHODS) == len(families)
    assert neuralode.solvers.METHODS is METHODS
    assert list(SOLVERS) == list(METHODS)
    for name in families:
        assert METHODS[name] is SOLVERS[name]
        assert isinstance(METHODS[name], Method) and METHODS[name].name in (name, "implicit_adams")
    assert METHODS["dopri5"].tableau is EXPLICIT_METHODS["dopri5"]
    assert METHODS["rodas5p"].tableau is IMPLICIT_METHODS["rodas5p"]
    assert METHODS["fixed_adams"].tableau is ADAMS_METHODS["fixed_adams"]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_solves_decay(name):
    """``y' = -y``, ``y(0) = 1`` to ``t = 1`` against ``exp(-1)``: a fixed-step method of order ``p`` at step
    ``h`` within ``h**p`` (a loose multiple of its error constant), an adaptive one within ``ADAPTIVE_TOL``."""
    record = METHODS[name]
    y0 = torch.ones(2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    if record.capabilities.adaptive:
        sol = solve(decay, y0, t, rtol=RTOL, atol=ATOL, method=name)
        tol = ADAPTIVE_TOL
    else:
        sol = solve(decay, y0, t, method=name, options={"step_size": STEP, **EXTRA_OPTIONS.get(name, {})})
        tol = STEP**record.order
    err = (sol.ys[-1] - math.exp(-1.0)).abs().max().item()
    assert err < tol, f"{name}: |y(1) - exp(-1)| = {err:.3g}, tolerance {tol:.3g}"
    assert sol.ys.dtype == F64


@pytest.mark.parametrize("name", ["rk45", "Dopri5", "dopri", "adams", "scipy", ""])
def test_solve_refuses_a_name_not_in_methods(name):
    assert name not in METHODS
    with pytest.raises(ValueError, match="Unknown method"):
        solve(decay, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method=name)


def test_methods_is_read_only_and_follows_registration():
    with pytest.raises(TypeError):
        METHODS["mine"] = METHODS["bosh3"]  # type: ignore[index]
    assert "mine" not in METHODS and 3 not in METHODS
    with pytest.raises(KeyError):
        METHODS["mine"]
    SOLVERS["mine_bosh3"] = EXPLICIT_METHODS["bosh3"]
    try:
        assert "mine_bosh3" in METHODS and METHODS["mine_bosh3"].name == "mine_bosh3"
    finally:
        del SOLVERS["mine_bosh3"]
    assert "mine_bosh3" not in METHODS


def test_get_tableau_gives_the_record_of_a_method():
    """``get_tableau`` gives a method's coefficient record (the data a Method holds), for the families that have
    one, and refuses the others naming the valid names."""
    assert neuralode.get_tableau("dopri5") is EXPLICIT_METHODS["dopri5"] is METHODS["dopri5"].tableau
    assert neuralode.get_tableau("radau5") is IMPLICIT_METHODS["radau5"]
    assert neuralode.get_tableau("auto") is METHODS["auto"].tableau
    for name in ("explicit_adams", "scipy_solver", "dopri"):
        with pytest.raises(ValueError, match="Valid methods: euler"):
            neuralode.get_tableau(name)
    with pytest.raises(TypeError, match="method must be a string"):
        neuralode.get_tableau(5)


def test_an_explicit_method_of_methods_registers_under_a_new_name():
    """``SOLVERS[name] = METHODS["bosh3"]`` registers bosh3's tableau under ``name``."""
    SOLVERS["again_bosh3"] = METHODS["bosh3"]
    try:
        m = METHODS["again_bosh3"]
        assert m.name == "again_bosh3" and m.tableau.b == EXPLICIT_METHODS["bosh3"].b
    finally:
        del SOLVERS["again_bosh3"]
