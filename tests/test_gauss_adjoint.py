"""The Gauss adjoint (adjoint_options={"quadrature": True}): a(t) alone backwards, dL/dθ by Gauss–Legendre
quadrature over the backward solve's accepted steps, y(t) from the forward dense output.

Float64 gradients with respect to y0, θ and the output times against backpropagation through the same
method at tight tolerances and against the interpolating adjoint; the quadrature rule and its order of
convergence measured; the refusals.
"""

import math

import pytest
import torch

from neuralode import odeint, odeint_adjoint
from neuralode.solvers.adjoint import gauss
from neuralode.solvers.adjoint.backsolve import solve_adjoint
from neuralode.solvers.adjoint.gauss import gauss_legendre, nodes_for_order
from neuralode.solvers.api import solve
from neuralode.solvers.methods.registry import resolve

F64 = torch.float64


class MLP(torch.nn.Module):
    """A small non-autonomous field on a (batch, 2) state."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(0.8 * torch.randn(3, 16, generator=g, dtype=F64))
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(16, generator=g, dtype=F64))
        self.w2 = torch.nn.Parameter(0.5 * torch.randn(16, 2, generator=g, dtype=F64))

    def forward(self, t, y):
        z = torch.cat([y, t.expand(y.shape[0], 1).to(y.dtype)], -1)
        return torch.tanh(z @ self.w1 + self.b1) @ self.w2


class StiffLinear(torch.nn.Module):
    """``y' = A y + sin(t) b`` with ``A = [[-k, 1], [c, -1]]`` (eigenvalues about -k and -1, k = 1e3 learnable)
    and a learnable forcing ``b``: stiff and non-autonomous, so the Rosenbrock ``df/dt`` term matters."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1e3, dtype=F64))
        self.c = torch.nn.Parameter(torch.tensor(0.5, dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor([1.0, -0.5], dtype=F64))

    def forward(self, t, y):
        y1, y2 = y.unbind(-1)
        dy1 = -self.k * y1 + y2
        dy2 = self.c * y1 - y2
        return torch.stack([dy1, dy2], -1) + torch.sin(t) * self.b


T = torch.tensor([0.0, 0.3, 0.7, 1.2], dtype=F64)
TOL = dict(rtol=1e-10, atol=1e-12)


def loss(ys):
    """A loss of every output time but the first, weighted unevenly (jumps of a at every output time)."""
    w = torch.arange(1, ys.shape[0], dtype=F64).reshape(-1, *[1] * (ys.dim() - 1))
    return (w * ys[1:] ** 2).sum() + ys[-1].sum()


def gradients(model, y0, method, mode, **kw):
    """``dL/d(y0, t, θ)`` flattened: ``mode`` is ``"backprop"`` or the adjoint_options of odeint_adjoint."""
    y0 = y0.clone().requires_grad_(True)
    t = T.clone().requires_grad_(True)
    if mode == "backprop":
        ys = odeint(model, y0, t, method=method, **TOL)
    else:
        ys = odeint_adjoint(model, y0, t, method=method, adjoint_method=method, adjoint_options=mode, **TOL, **kw)
    grads = torch.autograd.grad(loss(ys), (y0, t, *model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("s", [1, 2, 3, 5])
def test_gauss_legendre_is_exact_to_degree_2s_minus_1(s):
    x, w = gauss_legendre(s)
    assert len(x) == s and all(0.0 < xk < 1.0 for xk in x)
    for d in range(2 * s + 1):
        quad = sum(wk * xk**d for xk, wk in zip(x, w))
        if d <= 2 * s - 1:
            assert quad == pytest.approx(1.0 / (d + 1), rel=1e-14, abs=1e-15)
        else:  # degree 2s: the first the rule misses
            assert abs(quad - 1.0 / (d + 1)) > 1e-6


def test_nodes_follow_the_backward_methods_order():
    assert [nodes_for_order(resolve(m).order) for m in ("euler", "midpoint", "rk4", "dopri5", "rodas5p", "dopri8")] == [
        1,
        1,
        2,
        3,
        3,
        4,
    ]


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_explicit_gradients_match_backprop_and_the_interpolating_adjoint(method):
    model = MLP()
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.8], [-0.6, 0.2]], dtype=F64)
    ref = gradients(model, y0, method, "backprop")
    gauss = gradients(model, y0, method, {"quadrature": True})
    interp = gradients(model, y0, method, {"interpolate": True})
    assert rel(gauss, ref) < 1e-8
    assert rel(gauss, interp) < 1e-8


T_STIFF = torch.tensor([0.0, 0.05, 0.2], dtype=F64)
TOL_STIFF = dict(rtol=1e-7, atol=1e-9)


def stiff_gradients(method, mode):
    model = StiffLinear()
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = T_STIFF.clone().requires_grad_(True)
    if mode == "backprop":
        ys = odeint(model, y0, t, method=method, **TOL_STIFF)
    else:
        ys = odeint_adjoint(model, y0, t, method=method, adjoint_options=mode, **TOL_STIFF)
    grads = torch.autograd.grad(loss(ys), (y0, t, *model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("method", ["rodas5p", "kvaerno5"])
def test_stiff_gradients_match_backprop(method):
    """The forward solve resolves y's fast transient (rate 1e3) at t = 0 with small steps, the backward solve
    of a takes large ones there: the quadrature split at the forward step boundaries sees the transient.
    Measured: 7e-12 (rodas5p) and 8e-10 (kvaerno5) from backpropagation; one rule over each backward
    step without the split: 1.7e-4 and 3.6e-5."""
    ref = stiff_gradients(method, "backprop")
    assert rel(stiff_gradients(method, {"quadrature": True}), ref) < 1e-8


def test_stiff_interpolating_adjoint_keeps_its_quadrature_in_the_error_norm():
    """The interpolating adjoint samples y at its backward stages only. With the seminorm nothing in the
    error control sees y's transient inside a long backward step (measured: 1.9e-3 from backpropagation
    here); its default norm includes the dL/dθ quadrature, whose error estimate does (measured: 3.8e-11)."""
    ref = stiff_gradients("rodas5p", "backprop")
    assert rel(stiff_gradients("rodas5p", {"interpolate": True}), ref) < 1e-8
    assert rel(stiff_gradients("rodas5p", {"interpolate": True, "norm": "seminorm"}), ref) > 1e-4


def test_stiff_backward_jacobian_is_m_by_m():
    """The backward Jacobian the implicit method receives has the state's size, not state plus parameters."""
    seen = []

    original = gauss.adjoint_dynamics

    def spy(*args, **kw):
        dynamics, jacobian = original(*args, **kw)

        def jac(tt, state):
            J = jacobian(tt, state)
            seen.append(tuple(J.shape))
            return J

        return dynamics, jac

    gauss.adjoint_dynamics = spy
    try:
        stiff_gradients("rodas5p", {"quadrature": True})
    finally:
        gauss.adjoint_dynamics = original
    assert seen and set(seen) == {(2, 2)}


def test_tuple_state():
    w = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=F64, requires_grad=True)

    def f(t, y):
        u, v = y
        return (-u * v[0] + torch.cos(t), torch.tanh(u * w[0, 0] + w[1] @ v) * w[0] + w[1, 1] * v)

    def grads(mode):
        y0 = (
            torch.tensor([0.4], dtype=F64, requires_grad=True),
            torch.tensor([0.2, -0.1], dtype=F64, requires_grad=True),
        )
        t = T.clone().requires_grad_(True)
        if mode is None:
            u, v = odeint(f, y0, t, **TOL)
        else:
            u, v = odeint_adjoint(f, y0, t, adjoint_params=(w,), adjoint_options=mode, **TOL)
        L = (u[1:] ** 2).sum() + (v[1:] * torch.tensor([1.0, 3.0], dtype=F64)).sum()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(L, (*y0, t, w))])

    ref = grads(None)
    assert rel(grads({"quadrature": True}), ref) < 1e-8
    assert rel(grads({"quadrature": True}), grads({"interpolate": True})) < 1e-8


def test_quadrature_converges_at_the_rules_order():
    """rk4 forwards and backwards on the same grid of ``n`` steps (no forward boundary inside a backward step):
    with one node (the midpoint rule, exact to degree 1) dL/dθ converges as h², with the default two (exact to
    degree 3) as h⁴, rk4's own order; measured as log2 of the error ratio when h halves (2.0 and 4.1)."""
    model = MLP()
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.8]], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    params = tuple(model.parameters())
    ref = gradients_reference(model, y0, t, params)

    def error(n, nodes):
        ys = odeint_adjoint(
            model,
            y0,
            t,
            method="rk4",
            options={"step_size": 1.0 / n},
            adjoint_options={"quadrature": True, "quadrature_nodes": nodes, "step_size": 1.0 / n},
        )
        return rel(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss(ys), params)]), ref)

    slope = {nodes: math.log2(error(8, nodes) / error(16, nodes)) for nodes in (1, 2)}
    assert 1.8 < slope[1] < 2.2
    assert 3.7 < slope[2] < 4.4
    assert nodes_for_order(resolve("rk4").order) == 2


def gradients_reference(model, y0, t, params):
    """dL/dθ by backpropagation through dopri5 at rtol 1e-12: the continuous gradient to about 1e-11."""
    ys = odeint(model, y0, t, rtol=1e-12, atol=1e-14)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss(ys), params)])


def test_backward_counts_include_the_quadrature():
    model = MLP()
    y0 = torch.tensor([[0.5, -0.3]], dtype=F64)
    sol = solve_adjoint(model, y0, T, adjoint_options={"quadrature": True}, **TOL)
    loss(sol.ys).backward()
    st = sol.adjoint_stats
    # dopri5 (FSAL): 6 evaluations per step attempt plus the initial-step heuristic's; 3 nodes per accepted
    # step; one f per output time for dL/dt needs t to require grad (it does not here).
    assert st.n_accepted > 0
    assert st.nfe >= 6 * st.n_steps + 3 * st.n_accepted


def test_torchdiffeq_norm_receives_zero_parameter_entries():
    model = MLP()
    calls = []

    def norm(state):
        calls.append(state)
        return max(x.abs().max() for x in state[1:3])

    ys = odeint_adjoint(
        model, torch.tensor([[0.5, -0.3]], dtype=F64), T, adjoint_options={"quadrature": True, "norm": norm}
    )
    loss(ys).backward()
    n_params = len(list(model.parameters()))
    assert calls and all(len(s) == 3 + n_params for s in calls)
    assert all(bool((x == 0).all()) for s in calls for x in (s[0], s[1], *s[3:]))


def test_rosenbrock_forward_inside_adjoint_keeps_df_dt():
    """odeint_adjoint's forward solve runs inside an autograd.Function, where PyTorch switches forward-mode AD
    off; the Rosenbrock df/dt must not silently become zero there (it fell back to reverse mode)."""
    model = MLP()  # a batch of rows: the per-row ("batched") Jacobian takes df/dt by forward mode
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.8]], dtype=F64)
    with torch.no_grad():
        plain = solve(model, y0, T_STIFF, method="rodas5p", **TOL_STIFF).stats
    adj = solve_adjoint(
        model, y0, T_STIFF, method="rodas5p", options={"max_num_steps": 10 * plain.n_steps}, **TOL_STIFF
    ).stats
    assert adj.nfe == plain.nfe and adj.n_accepted == plain.n_accepted


REFUSALS = [
    ({"adjoint_options": {"quadrature": "yes"}}, TypeError, "quadrature"),
    ({"adjoint_options": {"quadrature": True, "quadrature_nodes": 0}}, ValueError, "quadrature_nodes"),
    ({"adjoint_options": {"quadrature": True, "quadrature_nodes": 2.0}}, TypeError, "quadrature_nodes"),
    ({"adjoint_options": {"quadrature_nodes": 2}}, ValueError, "quadrature"),
    ({"adjoint_options": {"quadrature": True, "interpolate": False}}, ValueError, "interpolate"),
    ({"adjoint_options": {"quadrature": True}, "options": {"per_sample": True}}, ValueError, "per_sample"),
    ({"adjoint_options": {"quadrature": True}, "event_fn": lambda t, y: y[0, 0] - 10.0}, ValueError, "events"),
    ({"adjoint_options": {"quadrature": True}, "method": "scipy_solver"}, ValueError, "method='scipy'"),
    ({"adjoint_options": {"quadrature": True}, "adjoint_method": "scipy_solver"}, ValueError, "adjoint_method='scipy'"),
    ({"adjoint_options": {"quadrature": True, "checkpoints": 4}}, ValueError, "checkpoints"),
]


@pytest.mark.parametrize("kw, error, words", REFUSALS)
def test_refusals(kw, error, words):
    kw = dict(kw)
    with pytest.raises(error, match=words):
        odeint_adjoint(MLP(), torch.tensor([[0.5, -0.3]], dtype=F64), T, **kw)


def test_double_backward_is_refused():
    model = MLP()
    y0 = torch.tensor([[0.5, -0.3]], dtype=F64, requires_grad=True)
    ys = odeint_adjoint(model, y0, T, adjoint_options={"quadrature": True})
    with pytest.raises(ValueError, match="quadrature"):
        torch.autograd.grad(loss(ys), y0, create_graph=True)
