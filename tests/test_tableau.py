"""Properties of the Butcher tableaus: structure, order conditions, dense output and validation messages.

Every test that concerns a method is parametrised over ``EXPLICIT_METHODS``, so a new method is tested by registering
it. The order of a method is checked through Butcher's theory: a Runge-Kutta method has order ``p`` exactly
when ``sum_i b_i Phi_i(t) = 1 / gamma(t)`` for every rooted tree ``t`` with at most ``p`` vertices, where
``Phi(t)`` is the tree's elementary weight vector and ``gamma(t)`` its density (Hairer-Norsett-Wanner I,
Sec. II.2, Theorem 2.13). A continuous extension ``b(theta)`` has order ``q`` when
``sum_i b_i(theta) Phi_i(t) = theta**|t| / gamma(t)`` for all trees with ``|t| <= q`` (ibid., Sec. II.6); for a
continuous extension with extra stages (``dense_extra``) the elementary weights are those of the extended method,
the step's stages followed by the extra ones.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from fractions import Fraction
from functools import cache

import numpy as np
import pytest
import torch

from neuralode.solvers.methods import tableau as tableau_module
from neuralode.solvers.methods.registry import get_tableau
from neuralode.solvers.methods.tableau import EXPLICIT_METHODS, ButcherTableau

MAX_TREE_ORDER = 9  # dopri8 needs trees up to order 8, plus order 9 to show the order is not higher

# A tree is the sorted tuple of its root's subtrees; the single vertex is ().
Tree = tuple


# ---------------------------------------------------------------------------------------------------------------
# Rooted trees
# ---------------------------------------------------------------------------------------------------------------


@cache
def trees_by_order(max_order: int) -> tuple[tuple[Tree, ...], ...]:
    """All rooted trees with 1..max_order vertices; entry n - 1 holds those with n vertices.

    A tree with n vertices is a root with a multiset of subtrees whose sizes add up to n - 1. Listing the
    subtrees in non-decreasing position of a global enumeration of smaller trees makes each multiset (and so
    each tree) appear exactly once.
    """
    by_order: list[tuple[Tree, ...]] = [((),)]
    for n in range(2, max_order + 1):
        smaller = [t for level in by_order for t in level]
        sizes = [size for size, level in enumerate(by_order, start=1) for _ in level]
        found: list[Tree] = []

        def extend(start: int, remaining: int, chosen: tuple[Tree, ...]) -> None:
            if remaining == 0:
                found.append(chosen)
                return
            for idx in range(start, len(smaller)):
                if sizes[idx] <= remaining:
                    extend(idx, remaining - sizes[idx], chosen + (smaller[idx],))

        extend(0, n - 1, ())
        by_order.append(tuple(found))
    return tuple(by_order)


@cache
def size(t: Tree) -> int:
    return 1 + sum(size(child) for child in t)


@cache
def gamma(t: Tree) -> int:
    """Density: gamma(t) = |t| * prod(gamma(subtrees))."""
    return size(t) * math.prod(gamma(child) for child in t)


@cache
def sigma(t: Tree) -> int:
    """Symmetry: order of the tree's automorphism group."""
    return math.prod(math.factorial(m) * sigma(child) ** m for child, m in Counter(t).items())


def test_tree_counts_match_oeis_a000081():
    assert [len(level) for level in trees_by_order(MAX_TREE_ORDER)] == [1, 1, 2, 4, 9, 20, 48, 115, 286]


def test_trees_are_distinct_and_gamma_sigma_are_consistent():
    # Independent check of size, gamma and sigma: the number of monotone labellings alpha(t) = n!/(sigma gamma)
    # sums to (n - 1)! over the trees with n vertices (Hairer-Norsett-Wanner I, Sec. II.2, Exercise 3).
    for n, level in enumerate(trees_by_order(MAX_TREE_ORDER), start=1):
        assert len(set(level)) == len(level)
        assert all(size(t) == n for t in level)
        alphas = [Fraction(math.factorial(n), sigma(t) * gamma(t)) for t in level]
        assert all(a.denominator == 1 for a in alphas)
        assert sum(alphas) == math.factorial(n - 1)


# ---------------------------------------------------------------------------------------------------------------
# Elementary weights
# ---------------------------------------------------------------------------------------------------------------


class Weights:
    """Elementary weight vectors Phi(t) of one tableau, memoised per tree.

    ``extended``: over the ``s + e`` stages of the method extended by its extra dense-output stages.
    """

    def __init__(self, tab: ButcherTableau, extended: bool = False):
        rows = tab.a + (tab.a_extra or ()) if extended else tab.a
        n = len(rows)
        self.A = np.zeros((n, n))
        for i, row in enumerate(rows):
            self.A[i, :i] = row
        self._cache: dict[Tree, np.ndarray] = {}

    def phi(self, t: Tree) -> np.ndarray:
        """Phi(()) = 1 (each stage); Phi([t1, .., tm]) = prod_k (A @ Phi(t_k)), elementwise."""
        if t not in self._cache:
            v = np.ones(self.A.shape[0])
            for child in t:
                v = v * (self.A @ self.phi(child))
            self._cache[t] = v
        return self._cache[t]


@cache
def weights_of(tab: ButcherTableau, extended: bool) -> Weights:
    return Weights(tab, extended)


def residuals(tab: ButcherTableau, weights: np.ndarray, order: int, theta: float = 1.0) -> list[float]:
    """|weights . Phi(t) - theta**|t| / gamma(t)| for every tree of exactly ``order`` vertices.

    ``weights`` has one entry per stage, or per stage and extra stage (a ``dense_extra`` extension).
    """
    w = weights_of(tab, len(weights) > tab.stages)
    return [abs(float(weights @ w.phi(t)) - theta**order / gamma(t)) for t in trees_by_order(MAX_TREE_ORDER)[order - 1]]


def b_hat(tab: ButcherTableau) -> np.ndarray:
    return np.array(tab.b) - np.array(tab.b_err)


def dense_of(tab: ButcherTableau):
    """The method's continuous extension: ``dense`` (s rows) or ``dense_extra`` (s + e rows)."""
    return tab.dense if tab.dense is not None else tab.dense_extra


def b_theta(tab: ButcherTableau, theta: float) -> np.ndarray:
    """b_i(theta) = sum_j dense[i][j] * theta**(j+1), over the stages (and extra stages) of the extension."""
    dense = np.array(dense_of(tab))
    powers = theta ** np.arange(1, dense.shape[1] + 1)
    return dense @ powers


# Tolerance on |Phi . b - 1/gamma|. Exact-fraction methods meet the conditions to float rounding (worst seen:
# 1e-15, dopri8_13m). Tsitouras' coefficients are rounded decimals (worst seen: 2e-14, its 16-digit dense output);
# a new method with coefficients printed to fewer digits gets its own entry here. DOP853's 30-digit decimals meet
# them to rounding too, but its dense-output weights reach 545 in magnitude, so float64 rounding of the
# residuals is larger (worst seen: 1e-13, its dense output at theta = 0.9).
DEFAULT_TOL = 1e-12
TOL = {"tsit5": 1e-11}
# A condition counts as failed when its residual is far above any rounding. The smallest genuine failure among
# the registered methods is 8e-6 (dopri8_13m's b on order-9 trees; dopri8's b: 3e-5, its dense output on order-8
# trees: 8e-5, the largest over theta < 1); the next is 2e-4.
FAIL = 1e-6

# Orders of the embedded solutions b - b_err and b - b_err_aux where error_order is not the former: dopri8's
# error_order (7) is that of its combined estimate (see tableau.py); its embedded solutions have orders 5 and 3.
EMBEDDED_ORDER = {"dopri8": 5}
AUX_ORDER = {"dopri8": 3}

names = pytest.mark.parametrize("name", list(EXPLICIT_METHODS))
adaptive_names = pytest.mark.parametrize("name", [n for n, t in EXPLICIT_METHODS.items() if t.adaptive])
aux_names = pytest.mark.parametrize("name", [n for n, t in EXPLICIT_METHODS.items() if t.b_err_aux is not None])
dense_names = pytest.mark.parametrize("name", [n for n, t in EXPLICIT_METHODS.items() if dense_of(t) is not None])
THETAS = (0.1, 0.25, 0.5, 0.7, 0.9, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Registry and structure
# ---------------------------------------------------------------------------------------------------------------

EXPECTED = {
    # name: (stages, order, error_order, dense_order, fsal)
    "euler": (1, 1, None, None, False),
    "midpoint": (2, 2, None, None, False),
    "heun2": (2, 2, None, None, False),
    "heun3": (3, 3, None, None, False),
    "rk4": (4, 4, None, None, False),
    "rk4_38": (4, 4, None, None, False),
    "adaptive_heun": (2, 2, 1, None, False),
    # fehlberg2 propagates the order-2 b (as torchdiffeq does), but its last stage row is Fehlberg's order-1
    # b_hat, so the last stage is f(t1, y1_hat) != f(t1, y1): not FSAL (see test_fehlberg2_is_fsal_only_for_b_hat).
    "fehlberg2": (3, 2, 1, None, False),
    "bosh3": (4, 3, 2, None, True),
    "dopri5": (7, 5, 4, 4, True),
    "tsit5": (7, 5, 4, 4, True),
    # DOP853: 12 stages and f(t1, y1) as a 13th (FSAL, like dopri5); error_order 7 is that of the combined
    # 5th/3rd-order estimate; dense output of order 7 with 3 extra stages.
    "dopri8": (13, 8, 7, 7, True),
    # Prince-Dormand 13M (torchdiffeq's dopri8): 13 stages as published; b[12] = 1/4 != 0, so not FSAL.
    "dopri8_13m": (13, 8, 7, 4, False),
}


def test_registry_names_and_order():
    assert list(EXPLICIT_METHODS) == list(EXPECTED)
    kinds = [t.adaptive for t in EXPLICIT_METHODS.values()]
    assert kinds == sorted(kinds), "fixed-step methods come first"


@names
def test_registry_entry(name):
    tab = EXPLICIT_METHODS[name]
    assert tab.name == name
    assert get_tableau(name) is tab
    assert (tab.stages, tab.order, tab.error_order, tab.dense_order, tab.fsal) == EXPECTED[name]
    assert tab.adaptive == (tab.b_err is not None)
    assert tab.extra_stages == {"dopri8": 3, "dopri8_13m": 1}.get(name, 0)
    assert (tab.b_err_aux is not None) == (name in AUX_ORDER)
    assert tab.description and "\n" not in tab.description


@names
def test_fields_are_tuples_of_python_floats(name):
    tab = EXPLICIT_METHODS[name]
    vectors = [tab.c, tab.b, *tab.a] + ([tab.b_err] if tab.adaptive else []) + list(tab.dense or ())
    vectors += [v for v in (tab.b_err_aux, tab.c_extra) if v is not None]
    vectors += list(tab.a_extra or ()) + list(tab.dense_extra or ())
    for v in vectors:
        assert type(v) is tuple and all(type(x) is float for x in v)
    for matrix in (tab.a, tab.dense, tab.a_extra, tab.dense_extra):
        assert matrix is None or type(matrix) is tuple
    hash(tab)  # usable as a cache key by the stepper
    with pytest.raises(dataclasses.FrozenInstanceError):
        tab.order = 99


@names
def test_invariants(name):
    tab = EXPLICIT_METHODS[name]
    s = tab.stages
    assert len(tab.c) == len(tab.a) == s
    assert [len(row) for row in tab.a] == list(range(s))
    assert tab.c[0] == 0.0
    for i in range(s):
        assert math.fsum(tab.a[i]) == pytest.approx(tab.c[i], abs=1e-14)
    assert math.fsum(tab.b) == pytest.approx(1.0, abs=1e-14)
    if tab.adaptive:
        assert len(tab.b_err) == s
        assert math.fsum(tab.b_err) == pytest.approx(0.0, abs=1e-14)
        assert tab.error_order < tab.order  # every registered pair propagates the higher-order solution
    if tab.b_err_aux is not None:
        assert len(tab.b_err_aux) == s
        assert math.fsum(tab.b_err_aux) == pytest.approx(0.0, abs=1e-14)
    for j, row in enumerate(tab.a_extra or ()):
        assert len(row) == s + j
        assert math.fsum(row) == pytest.approx(tab.c_extra[j], abs=1e-14)
    if tab.fsal:
        assert tab.c[-1] == 1.0 and tab.a[-1] == tab.b[:-1] and tab.b[-1] == 0.0


@dense_names
def test_dense_output_endpoints(name):
    tab = EXPLICIT_METHODS[name]
    assert len(dense_of(tab)) == tab.stages + tab.extra_stages
    np.testing.assert_array_equal(b_theta(tab, 0.0), 0.0)
    # At theta = 1: b, and weight 0 on the extra stages (rounding of dopri8's weights, up to 545: 6e-14).
    b_ext = np.concatenate([tab.b, np.zeros(tab.extra_stages)])
    np.testing.assert_allclose(b_theta(tab, 1.0), b_ext, rtol=0, atol=1e-14 if tab.dense is not None else 2e-13)
    assert tab.dense_order <= tab.order


@dense_names
def test_dense_output_is_c1_across_steps(name):
    # All registered interpolants are Hermite-like: their derivative is f(t0, y0) at theta = 0 and f(t1, y1) at
    # theta = 1, the stage tableau.end_stage (an FSAL method's last stage before any extra stage; dopri8_13m's
    # extra stage at c = 1 on the row b), so the piecewise interpolant is continuously differentiable.
    tab = EXPLICIT_METHODS[name]
    assert tab.end_stage == (tab.stages - 1 if tab.fsal else tab.stages + tab.extra_stages - 1)
    dense = np.array(dense_of(tab))
    d0 = dense[:, 0]
    d1 = dense @ np.arange(1, dense.shape[1] + 1)
    unit = np.eye(tab.stages + tab.extra_stages)
    e_first, e_last = unit[0], unit[tab.end_stage]
    np.testing.assert_allclose(d0, e_first, rtol=0, atol=1e-12)
    np.testing.assert_allclose(d1, e_last, rtol=0, atol=1e-12)


def test_rk4_is_the_classic_method_and_rk4_38_is_torchdiffeqs():
    assert EXPLICIT_METHODS["rk4"].c == (0.0, 0.5, 0.5, 1.0)
    assert EXPLICIT_METHODS["rk4"].b == (1 / 6, 1 / 3, 1 / 3, 1 / 6)
    assert EXPLICIT_METHODS["rk4_38"].c == (0.0, 1 / 3, 2 / 3, 1.0)
    assert EXPLICIT_METHODS["rk4_38"].b == (1 / 8, 3 / 8, 3 / 8, 1 / 8)
    doc = tableau_module.__doc__
    assert "torchdiffeq" in doc and "3/8" in doc and "rk4_38" in doc


def test_dopri8_13m_has_torchdiffeqs_dopri8_coefficients():
    # torchdiffeq stores the 13M method with a 14th zero-weight stage f(t1, y1) (alpha and c_sol have one entry
    # more); its c_error is b - b_hat. Coefficients agree to float rounding of the rationals.
    dopri8 = pytest.importorskip("torchdiffeq._impl.dopri8")
    td = dopri8._DOPRI8_TABLEAU
    tab = EXPLICIT_METHODS["dopri8_13m"]
    np.testing.assert_allclose(td.alpha.numpy()[:12], tab.c[1:], rtol=0, atol=1e-16)
    np.testing.assert_allclose(td.c_sol.numpy(), (*tab.b, 0.0), rtol=0, atol=1e-16)
    np.testing.assert_allclose(td.c_error.numpy(), (*tab.b_err, 0.0), rtol=0, atol=1e-16)
    for i, row in enumerate(td.beta[:12], start=1):
        np.testing.assert_allclose(row.numpy(), tab.a[i], rtol=0, atol=1e-15)


def test_fehlberg2_is_fsal_only_for_b_hat():
    # torchdiffeq's fehlberg2: c_sol = b = (1/512, 255/256, 1/512) is propagated (order 2) and
    # c_error = b - b_hat = (-1/512, 0, 1/512), so b_hat = (1/256, 255/256, 0) (order 1) equals the last row of a.
    tab = EXPLICIT_METHODS["fehlberg2"]
    assert tab.b == (1 / 512, 255 / 256, 1 / 512)
    np.testing.assert_allclose(tab.b_err, (-1 / 512, 0, 1 / 512), rtol=0, atol=1e-17)
    assert tuple(b_hat(tab)[:-1]) == tab.a[-1] and b_hat(tab)[-1] == 0.0
    assert not tab.fsal


# ---------------------------------------------------------------------------------------------------------------
# Order conditions
# ---------------------------------------------------------------------------------------------------------------


@names
def test_order_conditions_of_b(name):
    tab = EXPLICIT_METHODS[name]
    tol = TOL.get(name, DEFAULT_TOL)
    b = np.array(tab.b)
    for q in range(1, tab.order + 1):
        assert max(residuals(tab, b, q)) < tol, f"{name}: order condition of order {q} fails"
    # The stated order is exact: some tree of order p + 1 fails. (No registered method has the structure that
    # raises the order for special problems only; the order is the classical one for every method.)
    assert max(residuals(tab, b, tab.order + 1)) > FAIL, f"{name} is of order > {tab.order}"


@adaptive_names
def test_order_conditions_of_b_hat(name):
    tab = EXPLICIT_METHODS[name]
    tol = TOL.get(name, DEFAULT_TOL)
    bh = b_hat(tab)
    order = EMBEDDED_ORDER.get(name, tab.error_order)
    for q in range(1, order + 1):
        assert max(residuals(tab, bh, q)) < tol, f"{name}: embedded order condition of order {q} fails"
    assert max(residuals(tab, bh, order + 1)) > FAIL, f"{name}: b_hat is of order > {order}"


@aux_names
def test_order_conditions_of_second_embedded_solution(name):
    tab = EXPLICIT_METHODS[name]
    tol = TOL.get(name, DEFAULT_TOL)
    bh = np.array(tab.b) - np.array(tab.b_err_aux)
    order = AUX_ORDER[name]
    for q in range(1, order + 1):
        assert max(residuals(tab, bh, q)) < tol, f"{name}: order condition {q} of b - b_err_aux fails"
    assert max(residuals(tab, bh, order + 1)) > FAIL, f"{name}: b - b_err_aux is of order > {order}"


def test_dopri8_is_dop853_and_dopri8_13m_is_torchdiffeqs():
    dop853, m13 = EXPLICIT_METHODS["dopri8"], EXPLICIT_METHODS["dopri8_13m"]
    assert dop853.c[5:12] == (1 / 3, 1 / 4, 4 / 13, 127 / 195, 3 / 5, 6 / 7, 1.0)
    assert dop853.c_extra == (0.1, 0.2, 7 / 9)
    assert dop853.b[0] == pytest.approx(5.42937341165687622380535766363e-2, abs=1e-17)
    assert m13.b[0] == 14005451 / 335480064 and m13.b[12] == 0.25
    assert "DOP853" in dop853.description and "torchdiffeq" in m13.description
    doc = tableau_module.__doc__
    assert "DOP853" in doc and "dopri8_13m" in doc


@dense_names
def test_order_conditions_of_dense_output(name):
    tab = EXPLICIT_METHODS[name]
    tol = TOL.get(name, DEFAULT_TOL)
    for theta in THETAS:
        bt = b_theta(tab, theta)
        for q in range(1, tab.dense_order + 1):
            assert max(residuals(tab, bt, q, theta)) < tol, f"{name}: dense order {q} fails at theta={theta}"
    # Order dense_order + 1 fails strictly inside the step (at theta = 1 it is b, which has the full order).
    worst = max(max(residuals(tab, b_theta(tab, th), tab.dense_order + 1, th)) for th in THETAS[:-1])
    assert worst > FAIL


# ---------------------------------------------------------------------------------------------------------------
# Validation messages
# ---------------------------------------------------------------------------------------------------------------

GOOD = dict(name="bad", c=(0, 0.5), a=((), (0.5,)), b=(0, 1), order=2)


def test_valid_construction_converts_fractions_and_ints():
    tab = ButcherTableau(
        name="frac",
        c=(0, Fraction(1, 2)),
        a=((), (Fraction(1, 2),)),
        b=(Fraction(0), 1),
        order=2,
        b_err=(Fraction(-1), np.float64(1.0)),
        error_order=1,
        dense=((1, -1), (0, 1)),
        dense_order=1,
    )
    assert tab.c == (0.0, 0.5) and tab.a == ((), (0.5,)) and tab.b == (0.0, 1.0)
    assert tab.b_err == (-1.0, 1.0) and tab.dense == ((1.0, -1.0), (0.0, 1.0))
    assert all(type(x) is float for x in (*tab.c, *tab.b, *tab.b_err, *tab.a[1]))
    assert tab.stages == 2 and tab.adaptive and not tab.fsal


def test_rounded_coefficients_are_accepted_but_typos_are_not():
    ButcherTableau(**{**GOOD, "a": ((), (0.5 + 1e-12,))})
    with pytest.raises(ValueError, match="rows of a must sum to c"):
        ButcherTableau(**{**GOOD, "a": ((), (0.5 + 1e-8,))})


P = "ButcherTableau 'bad': "
# A valid continuous extension with one extra stage (f at the midpoint of the step), to break field by field.
EXTRA = dict(c_extra=(0.5,), a_extra=((0.25, 0.25),), dense_extra=((0,), (1,), (0,)), dense_order=1)
BROKEN = [
    ({"c": (), "a": (), "b": ()}, P + "b is empty; a method needs at least one stage"),
    ({"c": (0, 0.5, 1)}, P + "len(c) = 3 but len(b) = 2; c and b need one entry per stage"),
    ({"a": ((),)}, P + "a has 1 rows but there are 2 stages; a needs one row per stage"),
    (
        {"a": ((), (0.25, 0.25))},
        P + "row 1 of a has 2 entries; row i of an explicit method has exactly i entries "
        "(strictly lower triangular, row 0 is empty)",
    ),
    ({"c": (0.1, 0.5)}, P + "c[0] = 0.1; the first stage is evaluated at the start of the step, c[0] = 0"),
    ({"a": ((), (0.3,))}, P + "row 1 of a sums to 0.3 but c[1] = 0.5; rows of a must sum to c"),
    ({"b": (0.5, 0.75)}, P + "b sums to 1.25; b must sum to 1"),
    ({"b": (math.nan, 1)}, P + "b contains nan; all coefficients must be finite"),
    ({"c": (0, math.inf)}, P + "c contains inf; all coefficients must be finite"),
    ({"order": 0}, P + "order = 0; order must be >= 1"),
    ({"b_err": (-1, 1)}, P + "b_err is given but error_order is None; give both for an embedded pair or neither"),
    ({"error_order": 1}, P + "error_order is given but b_err is None; give both for an embedded pair or neither"),
    (
        {"b_err": (-1, 0, 1), "error_order": 1},
        P + "len(b_err) = 3 but there are 2 stages; b_err needs one entry per stage",
    ),
    ({"b_err": (0.5, 0.25), "error_order": 1}, P + "b_err sums to 0.75; b_err = b - b_hat must sum to 0"),
    ({"b_err": (-1, 1), "error_order": 0}, P + "error_order = 0; error_order must be >= 1"),
    (
        {"dense": ((0,), (1,))},
        P + "dense is given but dense_order is None; give both for a continuous extension or neither",
    ),
    (
        {"dense_order": 1},
        P + "dense_order is given but dense is None; give both for a continuous extension or neither",
    ),
    (
        {"dense": ((0,),), "dense_order": 1},
        P + "dense has 1 rows but there are 2 stages; dense needs one row per stage",
    ),
    (
        {"dense": ((), ()), "dense_order": 1},
        P + "row 0 of dense is empty; dense needs at least one column (the theta term)",
    ),
    (
        {"dense": ((1, -1), (1,)), "dense_order": 1},
        P + "row 1 of dense has 1 entries but row 0 has 2; dense must be an (s, m) matrix",
    ),
    (
        {"dense": ((0,), (0.9,)), "dense_order": 1},
        P + "row 1 of dense sums to 0.9 but b[1] = 1.0; the continuous extension at theta = 1 must reproduce b",
    ),
    ({"dense": ((0,), (1,)), "dense_order": 0}, P + "dense_order = 0; dense_order must be >= 1"),
    ({"b_err_aux": (-1, 1)}, P + "b_err_aux is given but b_err is None; a second error estimate needs the first"),
    (
        {"b_err": (-1, 1), "error_order": 1, "b_err_aux": (1,)},
        P + "len(b_err_aux) = 1 but there are 2 stages; b_err_aux needs one entry per stage",
    ),
    (
        {"b_err": (-1, 1), "error_order": 1, "b_err_aux": (1, 1)},
        P + "b_err_aux sums to 2.0; an error estimate's weights must sum to 0",
    ),
    (
        {"c_extra": (0.5,), "dense_extra": ((0,), (1,), (0,)), "dense_order": 1},
        P + "c_extra, dense_extra given but a_extra None; give c_extra, a_extra and dense_extra together or none",
    ),
    (
        {**EXTRA, "dense": ((0,), (1,))},
        P + "dense and dense_extra are both given; a method has one continuous extension",
    ),
    (
        {**EXTRA, "dense_order": None},
        P + "dense_extra is given but dense_order is None; give both for a continuous extension or neither",
    ),
    (
        {**EXTRA, "c_extra": (), "a_extra": ()},
        P + "c_extra is empty; leave c_extra, a_extra and dense_extra None for no extra stages",
    ),
    (
        {**EXTRA, "a_extra": ()},
        P + "a_extra has 0 rows but c_extra has 1; one row per extra stage",
    ),
    (
        {**EXTRA, "a_extra": ((0.5,),)},
        P + "row 0 of a_extra has 1 entries; extra stage 0 combines the 2 stages of the step and the 0 extra "
        "stages before it, so it needs 2",
    ),
    (
        {**EXTRA, "a_extra": ((0.5, 0.5),)},
        P + "row 0 of a_extra sums to 1.0 but c_extra[0] = 0.5; rows must sum to c",
    ),
    (
        {**EXTRA, "dense_extra": ((0,), (1,))},
        P + "dense_extra has 2 rows but there are 3 stages; dense_extra needs one row per stage and extra stage",
    ),
    (
        {**EXTRA, "dense_extra": ((0, 0), (1, 0), (0,))},
        P + "row 2 of dense_extra has 1 entries but row 0 has 2; dense_extra must be an (s + e, m) matrix",
    ),
    (
        {**EXTRA, "dense_extra": ((0,), (1,), (0.5,))},
        P + "row 2 of dense_extra sums to 0.5 but 0 (an extra stage has no weight in y1); "
        "the continuous extension at theta = 1 must reproduce b",
    ),
]


def test_valid_extra_stages():
    tab = ButcherTableau(**{**GOOD, **EXTRA})
    assert tab.extra_stages == 1 and tab.a_extra == ((0.25, 0.25),) and tab.dense is None


@pytest.mark.parametrize("change, message", BROKEN, ids=[m.split("; ")[0][len(P) :] for _, m in BROKEN])
def test_broken_tableau_raises_value_error(change, message):
    with pytest.raises(ValueError) as info:
        ButcherTableau(**{**GOOD, **change})
    assert str(info.value) == message


BROKEN_TYPES = [
    ({"name": ""}, "ButcherTableau name must be a non-empty string; got ''"),
    ({"order": 2.0}, P + "order must be an int; got float"),
    ({"order": True}, P + "order must be an int; got bool"),
    ({"b_err": (-1, 1), "error_order": "1"}, P + "error_order must be an int; got str"),
    ({"c": (0, "0.5")}, P + "c must contain real numbers; got '0.5'"),
    ({"b": 1.0}, P + "b must be a sequence of real numbers; got float"),
    ({"a": ((), (None,))}, P + "row 1 of a must contain real numbers; got None"),
]


@pytest.mark.parametrize("change, message", BROKEN_TYPES)
def test_wrongly_typed_tableau_raises_type_error(change, message):
    with pytest.raises(TypeError) as info:
        ButcherTableau(**{**GOOD, **change})
    assert str(info.value) == message


def test_message_names_tableau_row_values_and_rule():
    with pytest.raises(ValueError) as info:
        ButcherTableau(
            name="dopri5", c=(0, 0.2, 0.1, 0.29), a=((), (0.2,), (0.1, 0), (0.3, 0, 0)), b=(0, 0, 0, 1), order=1
        )
    assert str(info.value) == (
        "ButcherTableau 'dopri5': row 3 of a sums to 0.3 but c[3] = 0.29; rows of a must sum to c"
    )


# ---------------------------------------------------------------------------------------------------------------
# get_tableau
# ---------------------------------------------------------------------------------------------------------------


def test_get_tableau_unknown_method():
    with pytest.raises(ValueError) as info:
        get_tableau("foo")
    assert str(info.value) == (
        "Unknown method 'foo'. Valid methods: euler, midpoint, heun2, heun3, rk4, rk4_38, "
        "adaptive_heun, fehlberg2, bosh3, dopri5, tsit5, dopri8, dopri8_13m, rosenbrock23, rodas5p, kvaerno5, radau5, radau9, radau13, implicit_euler, implicit_midpoint, trapezoid, "
        "radauIIA3, radauIIA5, gl4, gl6, sdirk2, trbdf2, auto."
    )
    with pytest.raises(ValueError, match=re.escape("Unknown method 'RK4'.")):
        get_tableau("RK4")


@pytest.mark.parametrize(
    "method, type_name", [(None, "NoneType"), (4, "int"), (EXPLICIT_METHODS["rk4"], "ButcherTableau")]
)
def test_get_tableau_non_string(method, type_name):
    with pytest.raises(TypeError) as info:
        get_tableau(method)
    assert str(info.value) == f"method must be a string naming a solver; got {type_name}."


def test_dopri8_13m_interpolates_as_torchdiffeq_does():
    """dopri8_13m's continuous extension is torchdiffeq's interpolant of its dopri8: the quartic through y0, y1,
    f0, f1 and the midpoint estimate y0 + dt sum C_mid_i k_i (torchdiffeq's own functions, on one step's stages
    of a nonlinear problem), to rounding at every theta."""
    dopri8 = pytest.importorskip("torchdiffeq._impl.dopri8")
    interp = pytest.importorskip("torchdiffeq._impl.interp")
    from neuralode.solvers.methods.interpolation import continuous_extension, dense_stages
    from neuralode.solvers.methods.stepper import rk_step

    tab = EXPLICIT_METHODS["dopri8_13m"]

    def f(t, y):
        return torch.stack([y[1], -torch.sin(y[0]) + 0.1 * t * y[1]])

    y0, t0, dt = torch.tensor([1.0, 0.3], dtype=torch.float64), 0.2, 0.4
    step = rk_step(f, t0, y0, f(t0, y0), dt, tab)
    k = step.k + dense_stages(f, t0, y0, step.k, dt, tab)
    assert torch.equal(k[-1], f(t0 + dt, step.y1))  # the extra stage is f(t1, y1)
    c_mid = torch.tensor(dopri8.C_mid, dtype=torch.float64)
    y_mid = y0 + dt * sum(c * ki for c, ki in zip(c_mid, k))
    coeffs = interp._interp_fit(y0, step.y1, y_mid, k[0], k[-1], dt)
    for theta in (0.1, 0.25, 0.5, 0.7, 0.9):
        ours = continuous_extension(y0, k, dt, tab.dense_extra, theta)
        t64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
        theirs = interp._interp_evaluate(coeffs, t64(0.0), t64(1.0), t64(theta))
        torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=0, atol=1e-14)
