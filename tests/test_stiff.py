"""The stiff methods: Rosenbrock coefficient sets (order conditions), their steps (measured local orders), solves
against scipy's Radau on stiff problems, per-sample batched Jacobians, and the bad-input errors.

Every method-level test is parametrised over ``IMPLICIT_METHODS``, so registering a method tests it.
"""

from __future__ import annotations

import math
import re

import pytest

from neuralode.solvers.implicit import ROSENBROCK_METHODS, RosenbrockTableau

pytestmark = pytest.mark.usefixtures("one_thread")

ROSENBROCK = list(ROSENBROCK_METHODS)


# ---------------------------------------------------------------------------------------------------------------
# Order conditions (Hairer & Wanner II, IV.7, Table 7.1 and Theorem 7.?): for a rooted tree t, with
# beta = alpha + Gamma (gamma on the diagonal), sum_j b_j Phi_j(t) = 1 / density(t), where Phi of a leaf is 1,
# a vertex with exactly one child contributes sum_k beta_jk Phi_k(child) (the Jacobian terms) and a vertex with
# several children the product over them of sum_k alpha_jk Phi_k(child).


def _trees(order: int) -> list[tuple]:
    """All rooted trees with ``order`` vertices, each a sorted tuple of its children."""
    if order == 1:
        return [()]
    out = set()

    def forests(rem: int, largest):
        if rem == 0:
            yield ()
            return
        for k in range(rem, 0, -1):
            for t in _trees(k):
                key = (k, t)
                if largest is not None and key > largest:
                    continue
                for rest in forests(rem - k, key):
                    yield (t, *rest)

    for children in forests(order - 1, None):
        out.add(tuple(sorted(children)))
    return sorted(out)


def _size(t) -> int:
    return 1 + sum(_size(c) for c in t)


def _density(t) -> int:
    return _size(t) * math.prod(_density(c) for c in t)


def _phi(t, alpha, beta, s):
    if not t:
        return [1.0] * s
    if len(t) == 1:
        v = _phi(t[0], alpha, beta, s)
        return [sum(beta[j][k] * v[k] for k in range(s)) for j in range(s)]
    out = [1.0] * s
    for child in t:
        v = _phi(child, alpha, beta, s)
        out = [out[j] * sum(alpha[j][k] * v[k] for k in range(s)) for j in range(s)]
    return out


def _residuals(tab: RosenbrockTableau, order: int, embedded: bool) -> list[float]:
    alpha, Gamma, b, b_hat = tab.standard()
    s = tab.stages
    beta = [[alpha[i][j] + Gamma[i][j] for j in range(s)] for i in range(s)]
    w = b_hat if embedded else b
    return [sum(wi * x for wi, x in zip(w, _phi(t, alpha, beta, s))) - 1.0 / _density(t) for t in _trees(order)]


def test_tree_count():
    assert [len(_trees(p)) for p in range(1, 7)] == [1, 1, 2, 4, 9, 20]


@pytest.mark.parametrize("name", ROSENBROCK)
def test_order_conditions(name):
    tab = ROSENBROCK_METHODS[name]
    for embedded, order in ((False, tab.order), (True, tab.error_order)):
        for p in range(1, order + 1):
            assert max(abs(r) for r in _residuals(tab, p, embedded)) < 1e-12, (name, embedded, p)
        # The claimed order is exact: some condition of the next order fails.
        assert max(abs(r) for r in _residuals(tab, order + 1, embedded)) > 1e-4, (name, embedded, order + 1)


def test_rodas5p_is_stiffly_accurate_and_rosenbrock23_fsal():
    rodas = ROSENBROCK_METHODS["rodas5p"]
    alpha, Gamma, b, _ = rodas.standard()
    # Stiffly accurate: b is the last row of beta = alpha + Gamma, so y1 is the last stage's solution and
    # the stability function vanishes at infinity.
    assert max(abs(b[j] - (alpha[-1][j] + Gamma[-1][j])) for j in range(rodas.stages)) < 1e-12
    assert not rodas.fsal and ROSENBROCK_METHODS["rosenbrock23"].fsal


def _stability(tab: RosenbrockTableau, z: complex) -> complex:
    """R(z) for y' = lambda y, z = h lambda: (I - z beta)^-1 1 solved with the classical coefficients."""
    alpha, Gamma, b, _ = tab.standard()
    s = tab.stages
    k: list[complex] = []
    for i in range(s):
        rhs = 1 + z * sum(alpha[i][j] * k[j] for j in range(i)) + z * sum(Gamma[i][j] * k[j] for j in range(i))
        k.append(rhs / (1 - z * tab.gamma))
    return 1 + z * sum(bi * ki for bi, ki in zip(b, k))


@pytest.mark.parametrize("name", ROSENBROCK)
def test_l_stable(name):
    tab = ROSENBROCK_METHODS[name]
    assert abs(_stability(tab, -1e8)) < 1e-6
    for z in (-0.5, -5.0, -50.0, complex(-1.0, 30.0), complex(0.0, 3.0), complex(-1e-3, 100.0)):
        assert abs(_stability(tab, z)) <= 1.0 + 1e-12, (name, z)


def test_tableau_is_checked_when_built():
    good = ROSENBROCK_METHODS["rosenbrock23"]
    fields = dict(name="bad", gamma=good.gamma, a=good.a, C=good.C, c=good.c, d=good.d, m=good.m,
                  m_err=good.m_err, order=2, error_order=3)
    RosenbrockTableau(**fields)
    with pytest.raises(ValueError, match=re.escape("RosenbrockTableau 'bad': c[1] = 0.6 is not the row sum")):
        RosenbrockTableau(**{**fields, "c": (0.0, 0.6, 1.0)})
    with pytest.raises(ValueError, match=re.escape("RosenbrockTableau 'bad': d[2] = 0.0 is not the row sum")):
        RosenbrockTableau(**{**fields, "d": (good.d[0], 0.0, 0.0)})
    with pytest.raises(ValueError, match=re.escape("the weights b = m Gamma must sum to 1")):
        RosenbrockTableau(**{**fields, "m": (good.m[0] * 1.01, *good.m[1:])})
    with pytest.raises(ValueError, match=re.escape("a[2] must have 2 entries (strictly lower triangular); got 1")):
        RosenbrockTableau(**{**fields, "a": ((), (1.0,), (1.0,))})
    with pytest.raises(ValueError, match="gamma must be a positive finite number"):
        RosenbrockTableau(**{**fields, "gamma": -1.0})


