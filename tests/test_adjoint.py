"""Properties of the adjoint method: its gradients, its memory, its statistics and the seed claim.

* Gradients by the adjoint (``odeint_adjoint``) agree with backpropagation through the solver
  (``odeint``) at tight tolerances, for every parameter, ``y0`` and ``t``; ``t`` gradients also
  agree with the closed form ``dL/dt_i = dL/dy(t_i) . f(t_i, y(t_i))``.
* ``gradcheck`` (finite differences in float64) passes, including its check that backward is
  deterministic when run twice on one graph.
* The bytes autograd saves for backward do not grow with the number of steps under the adjoint,
  and grow linearly with backprop.
* The seminorm (on by default) saves backward evaluations without changing the gradients.
* The weight-tied residual stack ``h <- h + f(h) / N`` *is* Euler's method with step ``1/N``, and
  converges to the ODE solution at first order as ``N`` grows.

Everything is float64 unless a test says otherwise; the networks are small so the file runs in
seconds.
"""

from __future__ import annotations

import math
import re
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from neuralode import Event, odeint, odeint_adjoint, solve, solve_adjoint
from neuralode.models import ConcatLinear, ODEBlock, ODEFunc

F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# Helpers.


class TimeMLP(ODEFunc):
    """``f(t, y) = L2(tanh(L1([y, t])))``, non-autonomous so that ``t`` gradients are nontrivial."""

    def __init__(self, dim: int = 3, hidden: int = 8, seed: int = 0, dtype=F64):
        super().__init__()
        torch.manual_seed(seed)
        self.l1 = ConcatLinear(dim, hidden)
        self.l2 = ConcatLinear(hidden, dim)
        self.to(dtype)

    def forward(self, t, y):
        return self.l2(t, torch.tanh(self.l1(t, y)))


def mlp(dim: int, hidden: int, seed: int = 0, dtype=F64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)).to(dtype)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``|got - ref| / |ref|`` in the 2-norm over the whole tensor."""
    got, ref = got.detach(), ref.detach()
    return float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref))


def weighted_square_loss(ys, weights):
    """``sum_i w_i * y(t_i)^2`` over all outputs (tensor or tuple state)."""
    if isinstance(ys, tuple):
        return sum((w * y * y).sum() for w, y in zip(weights, ys))
    return (weights * ys * ys).sum()


def gradients(integrate, func, y0, t, weights, params):
    """Loss and gradients to ``y0`` (each tensor of a tuple), ``t`` and ``params`` (fresh leaves)."""
    parts = y0 if isinstance(y0, tuple) else (y0,)
    parts = tuple(p.detach().clone().requires_grad_(True) for p in parts)
    t = t.detach().clone().requires_grad_(True)
    ys = integrate(func, parts if isinstance(y0, tuple) else parts[0], t)
    loss = weighted_square_loss(ys, weights)
    grads = torch.autograd.grad(loss, (*parts, t, *params))
    n = len(parts)
    return ys, grads[:n], grads[n], grads[n + 1 :]


def assert_close_rel(got, ref, tol, what):
    err = rel_err(got, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def raises_exactly(exc_type, message):
    """``pytest.raises`` for the exact type and the full text of the message."""
    return pytest.raises(exc_type, match="^" + re.escape(message) + "$")


# ------------------------------------------------------------------------------------------------
# 1. Adjoint gradients against backpropagation through the solver, and the closed form for t.

TIGHT = dict(rtol=1e-10, atol=1e-10)
METHOD_OPTIONS = {
    "dopri5": None,
    "tsit5": None,
    "bosh3": None,
    # Fixed step: 100 steps of classic RK4 on [0.2, 1.2] are accurate to ~1e-10, so the adjoint
    # of the ODE and the derivative of the discrete solver agree to far better than 1e-6.
    "rk4": {"step_size": 0.01},
}


@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
def test_adjoint_matches_backprop_and_exact_time_gradients(method):
    func = TimeMLP(dim=3, hidden=8, seed=1)
    params = tuple(func.parameters())
    torch.manual_seed(2)
    y0 = torch.randn(4, 3, dtype=F64)
    t = torch.linspace(0.2, 1.2, 5, dtype=F64)
    weights = torch.rand(5, 4, 3, dtype=F64)
    kw = dict(method=method, options=METHOD_OPTIONS[method], **TIGHT)

    ys_bp, (gy_bp,), gt_bp, gp_bp = gradients(lambda f, y, s: odeint(f, y, s, **kw), func, y0, t, weights, params)
    ys_adj, (gy_adj,), gt_adj, gp_adj = gradients(
        lambda f, y, s: odeint_adjoint(f, y, s, **kw), func, y0, t, weights, params
    )

    assert_close_rel(ys_adj, ys_bp, 1e-12, "forward values")
    assert_close_rel(gy_adj, gy_bp, 1e-6, "dL/dy0")
    assert_close_rel(gt_adj, gt_bp, 1e-6, "dL/dt")
    for i, (a, b) in enumerate(zip(gp_adj, gp_bp)):
        assert_close_rel(a, b, 1e-6, f"dL/dparam[{i}]")

    # The closed form: g_i = dL/dy(t_i) directly = 2 w_i y_i;
    # dL/dt_i = g_i . f(t_i, y_i) (i >= 1), dL/dt_0 = -(dL/dy0 - g_0) . f(t_0, y_0).
    with torch.no_grad():
        ys = ys_bp.detach()
        g = 2 * weights * ys
        f = torch.stack([func(t[i], ys[i]) for i in range(len(t))])
        for name, gy, gt in (("backprop", gy_bp, gt_bp), ("adjoint", gy_adj, gt_adj)):
            exact = (g * f).flatten(1).sum(1)
            exact[0] = -((gy - g[0]) * f[0]).sum()
            assert_close_rel(gt, exact, 1e-6, f"dL/dt ({name}) against the closed form")


@pytest.mark.parametrize(
    "forward, backward",
    [
        (dict(method="dopri5"), dict(adjoint_method="rk4", adjoint_options={"step_size": 0.01})),
        (dict(method="rk4", options={"step_size": 0.01}), dict(adjoint_method="dopri5", adjoint_options={})),
        (
            dict(method="rk4", options={"step_size": 0.01}),
            dict(adjoint_options={"norm": "seminorm", "step_size": 0.01}),
        ),
    ],
    ids=["dopri5-then-rk4", "rk4-then-dopri5", "rk4-explicit-seminorm"],
)
def test_adjoint_method_differs_from_forward(forward, backward):
    # A fixed-step backward solve takes no norm: the default seminorm applies to adaptive ones only.
    func = TimeMLP(dim=3, hidden=8, seed=21)
    params = tuple(func.parameters())
    y0 = torch.randn(2, 3, dtype=F64)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    weights = torch.rand(3, 2, 3, dtype=F64)
    _, (gy_bp,), gt_bp, gp_bp = gradients(lambda f, y, s: odeint(f, y, s, **TIGHT), func, y0, t, weights, params)
    _, (gy_adj,), gt_adj, gp_adj = gradients(
        lambda f, y, s: odeint_adjoint(f, y, s, **TIGHT, **forward, **backward), func, y0, t, weights, params
    )
    assert_close_rel(gy_adj, gy_bp, 1e-6, "dL/dy0")
    assert_close_rel(gt_adj, gt_bp, 1e-6, "dL/dt")
    for i, (a, b) in enumerate(zip(gp_adj, gp_bp)):
        assert_close_rel(a, b, 1e-6, f"dL/dparam[{i}]")


# ------------------------------------------------------------------------------------------------
# 2. Finite differences.


def test_gradcheck_through_odeint_adjoint():
    torch.manual_seed(3)
    W1 = (torch.randn(4, 2, dtype=F64) * 0.8).requires_grad_(True)
    W2 = torch.randn(2, 4, dtype=F64) * 0.8
    y0 = torch.randn(2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)

    def solve_with(y0, W1):
        def func(tt, y):
            return torch.tanh(y @ W1.T) @ W2.T + 0.1 * torch.sin(tt)

        return odeint_adjoint(func, y0, t, rtol=1e-12, atol=1e-12, method="dopri5", adjoint_params=(W1,))

    # Tolerances: at solver tolerance 1e-12 the adjoint's gradients and central differences
    # (eps = 1e-6) differ by ~1e-9 (measured: 1.0e-9 for y0, 5e-10 for W1, entries of size ~1),
    # from the solver error, and the step-size choices that change as inputs are perturbed.
    # atol = 1e-7 leaves a margin of 100 and is 100 times tighter than gradcheck's default.
    # nondet_tol stays 0: backward run twice on one graph (gradcheck does that) must give
    # bitwise the same gradients.
    assert torch.autograd.gradcheck(solve_with, (y0, W1), atol=1e-7, rtol=1e-6)


def test_backward_twice_on_one_graph_is_deterministic():
    # Running backward again (retain_graph) must not depend on the previous backward's last step.
    func = TimeMLP(dim=3, hidden=8, seed=4)
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 4, dtype=F64)
    ys = odeint_adjoint(func, y0, t, rtol=1e-8, atol=1e-8)
    loss = (ys * ys).sum()
    first = torch.autograd.grad(loss, (y0, *func.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, (y0, *func.parameters()))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# 3. Memory: what autograd keeps for backward.


class _Held:
    """What the pack hook hands autograd: the saved tensor, in an object that can be weakly referenced."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def saved_bytes(run):
    """Bytes of the tensors that the graph built by ``run()`` keeps for backward.

    Every tensor autograd packs is wrapped; only wrappers still alive when ``run()`` has returned
    are counted, so graphs built and dropped on the way (e.g. by input checks on a ``y0`` that
    requires grad) do not count. Each tensor counts once per (data pointer, size): the same weight
    saved by every evaluation of ``func`` counts once.
    """
    held: list[weakref.ref] = []

    def pack(x):
        h = _Held(x)
        held.append(weakref.ref(h))
        return h

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.tensor):
        out = run()
    alive = {}
    for ref in held:
        h = ref()
        if h is not None:
            nbytes = h.tensor.numel() * h.tensor.element_size()
            alive[(h.tensor.data_ptr(), nbytes)] = nbytes
    del out
    return sum(alive.values())


MEMORY_STEPS = (10, 100, 1000)


def memory_profile(integrate):
    # float32: memory is about growth, not precision, and halves what backprop allocates here.
    net = mlp(16, 16, seed=5, dtype=torch.float32)
    y0 = torch.randn(64, 16, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float32)
    return {
        n: saved_bytes(lambda: integrate(lambda s, y: net(y), y0, t, net, {"step_size": 1.0 / n})) for n in MEMORY_STEPS
    }


def test_adjoint_memory_does_not_grow_with_steps_backprop_does():
    adjoint = memory_profile(
        lambda f, y0, t, net, opt: odeint_adjoint(
            f, y0, t, method="rk4", options=opt, adjoint_params=tuple(net.parameters())
        )
    )
    backprop = memory_profile(lambda f, y0, t, net, opt: odeint(f, y0, t, method="rk4", options=opt))
    print(f"saved bytes, adjoint: {adjoint}; backprop: {backprop}")

    # The adjoint keeps the outputs (2 x 64 x 16 float32) and t (2 float32), whatever the step count.
    assert set(adjoint.values()) == {2 * 64 * 16 * 4 + 2 * 4}
    # Backprop keeps every stage's activations: linear growth.
    assert backprop[1000] / backprop[10] > 50
    assert backprop[100] / backprop[10] > 5
    assert backprop[10] > adjoint[10]


# ------------------------------------------------------------------------------------------------
# 4. States, parameters and buffers.


class TupleFunc(nn.Module):
    """Couples a (3, 2) and a (4,) state: ``dA = tanh(A M) + b[:3] c^T``, ``db = tanh(V b)/2 + sum(A) d``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.M = nn.Parameter(torch.randn(2, 2, dtype=F64) * 0.5)
        self.c = nn.Parameter(torch.randn(2, dtype=F64) * 0.5)
        self.V = nn.Parameter(torch.randn(4, 4, dtype=F64) * 0.5)
        self.d = nn.Parameter(torch.randn(4, dtype=F64) * 0.2)

    def forward(self, t, state):
        A, b = state
        dA = torch.tanh(A @ self.M) + torch.outer(b[:3], self.c) * torch.cos(t)
        db = 0.5 * torch.tanh(self.V @ b) + A.sum() * self.d
        return dA, db


def test_tuple_state_adjoint_matches_backprop():
    func = TupleFunc()
    params = tuple(func.parameters())
    torch.manual_seed(7)
    y0 = (torch.randn(3, 2, dtype=F64), torch.randn(4, dtype=F64))
    t = torch.linspace(0.0, 1.0, 4, dtype=F64)
    weights = (torch.rand(4, 3, 2, dtype=F64), torch.rand(4, 4, dtype=F64))

    ys_bp, gy_bp, gt_bp, gp_bp = gradients(lambda f, y, s: odeint(f, y, s, **TIGHT), func, y0, t, weights, params)
    ys_adj, gy_adj, gt_adj, gp_adj = gradients(
        lambda f, y, s: odeint_adjoint(f, y, s, **TIGHT), func, y0, t, weights, params
    )
    assert isinstance(ys_adj, tuple) and [y.shape for y in ys_adj] == [(4, 3, 2), (4, 4)]
    for i in range(2):
        assert_close_rel(ys_adj[i], ys_bp[i], 1e-12, f"ys[{i}]")
        assert_close_rel(gy_adj[i], gy_bp[i], 1e-6, f"dL/dy0[{i}]")
    assert_close_rel(gt_adj, gt_bp, 1e-6, "dL/dt")
    for i, (a, b) in enumerate(zip(gp_adj, gp_bp)):
        assert_close_rel(a, b, 1e-6, f"dL/dparam[{i}]")


def test_per_tensor_tolerances_for_a_tuple_state():
    # rtol/atol given per tensor of a tuple state (one entry per tensor, as solve accepts them).
    func = TupleFunc()
    params = tuple(func.parameters())
    torch.manual_seed(22)
    y0 = (torch.randn(3, 2, dtype=F64), torch.randn(4, dtype=F64))
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    weights = (torch.rand(3, 3, 2, dtype=F64), torch.rand(3, 4, dtype=F64))
    tol = dict(rtol=(1e-10, 1e-11), atol=(torch.full((3, 2), 1e-10, dtype=F64), 1e-11))
    _, gy_bp, gt_bp, gp_bp = gradients(lambda f, y, s: odeint(f, y, s, **TIGHT), func, y0, t, weights, params)
    _, gy_adj, gt_adj, gp_adj = gradients(lambda f, y, s: odeint_adjoint(f, y, s, **tol), func, y0, t, weights, params)
    for i in range(2):
        assert_close_rel(gy_adj[i], gy_bp[i], 1e-6, f"dL/dy0[{i}]")
    assert_close_rel(gt_adj, gt_bp, 1e-6, "dL/dt")
    for i, (a, b) in enumerate(zip(gp_adj, gp_bp)):
        assert_close_rel(a, b, 1e-6, f"dL/dparam[{i}]")


@pytest.mark.parametrize(
    "shape",
    [
        (3,),
        (4, 3),
    ],
    ids=["1d-state", "2d-state"],
)
def test_tensor_tolerance_for_a_tensor_state(shape):
    func = TimeMLP(dim=3, hidden=8, seed=23)
    params = tuple(func.parameters())
    y0 = torch.randn(*shape, dtype=F64)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    weights = torch.rand(3, *shape, dtype=F64)
    atol = torch.tensor([1e-10, 1e-11, 1e-10], dtype=F64)  # broadcast over the batch
    _, (gy_bp,), _, gp_bp = gradients(lambda f, y, s: odeint(f, y, s, **TIGHT), func, y0, t, weights, params)
    _, (gy_adj,), _, gp_adj = gradients(
        lambda f, y, s: odeint_adjoint(f, y, s, rtol=1e-10, atol=atol), func, y0, t, weights, params
    )
    assert_close_rel(gy_adj, gy_bp, 1e-6, "dL/dy0")
    for i, (a, b) in enumerate(zip(gp_adj, gp_bp)):
        assert_close_rel(a, b, 1e-6, f"dL/dparam[{i}]")


def test_plain_function_with_adjoint_params():
    k = torch.tensor([0.5, 1.0, -0.3], dtype=F64, requires_grad=True)

    def func(t, y):  # closes over k
        return -k * y + torch.sin(t) * torch.tanh(y)

    y0 = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    weights = torch.rand(5, 3, dtype=F64)
    _, (gy_bp,), gt_bp, (gk_bp,) = gradients(lambda f, y, s: odeint(f, y, s, **TIGHT), func, y0, t, weights, (k,))
    _, (gy_adj,), gt_adj, (gk_adj,) = gradients(
        lambda f, y, s: odeint_adjoint(f, y, s, adjoint_params=(k,), **TIGHT), func, y0, t, weights, (k,)
    )
    assert_close_rel(gy_adj, gy_bp, 1e-6, "dL/dy0")
    assert_close_rel(gt_adj, gt_bp, 1e-6, "dL/dt")
    assert_close_rel(gk_adj, gk_bp, 1e-6, "dL/dk")


def test_plain_function_without_adjoint_params_raises():
    y0 = torch.ones(2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    message = (
        "func is not a torch.nn.Module, so the parameters to differentiate cannot be found; "
        "pass them as adjoint_params=(...) (an empty tuple if there are none)."
    )
    with raises_exactly(ValueError, message) as info:
        odeint_adjoint(lambda s, y: -y, y0, t)
    assert type(info.value) is ValueError


def test_plain_function_with_empty_adjoint_params_differentiates_y0():
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    odeint_adjoint(lambda s, y: -y, y0, t, adjoint_params=(), **TIGHT)[-1].sum().backward()
    torch.testing.assert_close(y0.grad, torch.full((2,), math.exp(-1.0), dtype=F64), rtol=1e-8, atol=0)


class ExtrasFunc(nn.Module):
    """An MLP with a buffer used in forward, an unused parameter and a frozen one."""

    def __init__(self):
        super().__init__()
        self.net = mlp(3, 8, seed=8)
        self.unused = nn.Parameter(torch.randn(5, dtype=F64))
        self.frozen = nn.Parameter(torch.tensor([0.7, -0.2, 0.4], dtype=F64), requires_grad=False)
        self.register_buffer("scale", torch.tensor([1.0, 0.5, -0.5], dtype=F64))

    def forward(self, t, y):
        return self.scale * self.net(y) + self.frozen * torch.cos(t)


def test_unused_frozen_parameters_and_buffers():
    torch.manual_seed(9)
    y0 = torch.randn(4, 3, dtype=F64)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)

    grads = {}
    for name, integrate in (("backprop", odeint), ("adjoint", odeint_adjoint)):
        func = ExtrasFunc()
        integrate(func, y0, t, **TIGHT).pow(2).sum().backward()
        assert func.frozen.grad is None
        assert func.scale.grad is None
        grads[name] = func
    adjoint, backprop = grads["adjoint"], grads["backprop"]
    # Unused: zeros, not None (backprop through the solver leaves None, as autograd does).
    assert backprop.unused.grad is None
    assert adjoint.unused.grad is not None and torch.equal(adjoint.unused.grad, torch.zeros(5, dtype=F64))
    for (name, a), b in zip(adjoint.net.named_parameters(), backprop.net.parameters()):
        assert_close_rel(a.grad, b.grad, 1e-6, name)


def test_shared_parameter_listed_twice_counts_once():
    func = mlp(3, 8, seed=10)
    y0 = torch.randn(2, 3, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    params = tuple(func.parameters())
    odeint(lambda s, y: func(y), y0, t, **TIGHT).pow(2).sum().backward()
    expected = [p.grad.clone() for p in params]
    func.zero_grad(set_to_none=True)
    odeint_adjoint(lambda s, y: func(y), y0, t, adjoint_params=params + params, **TIGHT).pow(2).sum().backward()
    for p, e in zip(params, expected):
        assert_close_rel(p.grad, e, 1e-6, "shared parameter")


# ------------------------------------------------------------------------------------------------
# 5. The seminorm.


def backward_nfe_and_grads(adjoint_options):
    func = TimeMLP(dim=4, hidden=16, seed=11)
    torch.manual_seed(12)
    y0 = torch.randn(8, 4, dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 3, dtype=F64)
    sol = solve_adjoint(func, y0, t, rtol=1e-6, atol=1e-6, adjoint_options=adjoint_options)
    grads = torch.autograd.grad(sol.ys.pow(2).sum(), (y0, *func.parameters()))
    return sol.adjoint_stats.nfe, grads


def test_seminorm_is_default_saves_evaluations_and_keeps_gradients():
    nfe_default, g_default = backward_nfe_and_grads(None)
    nfe_semi, g_semi = backward_nfe_and_grads({"norm": "seminorm"})
    nfe_full, g_full = backward_nfe_and_grads({"norm": "full"})
    print(f"backward NFE: seminorm (default) {nfe_default}, full {nfe_full}")

    # torchdiffeq's spelling is the default itself.
    assert nfe_semi == nfe_default
    for a, b in zip(g_semi, g_default):
        assert torch.equal(a, b)
    assert nfe_default < nfe_full
    for i, (a, b) in enumerate(zip(g_default, g_full)):
        assert_close_rel(a, b, 1e-5, f"gradient {i}, seminorm against full norm")


def test_bad_norm_raises():
    func = mlp(2, 4)
    y0 = torch.ones(2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    message = (
        "adjoint_options['norm'] must be 'seminorm' (the default), 'full' (the default of the interpolating "
        "adjoint with an implicit method) or a callable; got 'l2'."
    )
    with raises_exactly(ValueError, message) as info:
        odeint_adjoint(
            lambda s, y: func(y), y0, t, adjoint_params=tuple(func.parameters()), adjoint_options={"norm": "l2"}
        )
    assert type(info.value) is ValueError


def rms(x: torch.Tensor) -> torch.Tensor:
    """The root mean square, rounded as the solver's own RMS norm is."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


def seminorm_runs(adjoint_options, interpolate: bool):
    """Backward NFE, accepted and rejected steps, and gradients of a 3-output solve with ``adjoint_options``."""
    func = TimeMLP(dim=3, hidden=8, seed=23)
    torch.manual_seed(24)
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.5, 3, dtype=F64)
    options = dict(adjoint_options or {}, interpolate=interpolate)
    sol = solve_adjoint(func, y0, t, rtol=1e-6, atol=1e-8, adjoint_options=options)
    grads = torch.autograd.grad(sol.ys.pow(2).sum(), (y0, *func.parameters()))
    stats = sol.adjoint_stats
    return (stats.nfe, stats.n_accepted, stats.n_rejected), grads


@pytest.mark.parametrize("interpolate", [False, True], ids=["backsolve", "interpolating"])
def test_norm_in_torchdiffeqs_form_reproduces_the_seminorm(interpolate):
    # adjoint_options["norm"] is called as torchdiffeq calls it: norm((t, y, adj_y, *adj_params)).
    # max(RMS(y), RMS(adj_y)) written that way is the default seminorm (over (y, a) for the
    # backsolve; over a alone when interpolating, where the y entry is zero): the same steps and
    # the same gradients, to the bit. So is the backward state's own norm, augmented_norm.
    default = seminorm_runs(None, interpolate)
    written_for_torchdiffeq = seminorm_runs({"norm": lambda s: torch.maximum(rms(s[1]), rms(s[2]))}, interpolate)
    own = (lambda s: rms(s[0])) if interpolate else (lambda s: torch.maximum(rms(s[0]), rms(s[1])))
    augmented = seminorm_runs({"augmented_norm": own}, interpolate)
    for name, (counts, grads) in (("norm", written_for_torchdiffeq), ("augmented_norm", augmented)):
        assert counts == default[0], (name, counts, default[0])
        for g, d in zip(grads, default[1]):
            assert torch.equal(g, d), name
    # The full norm takes more steps: the norm is really used.
    full = seminorm_runs({"norm": lambda s: max(rms(x) for x in s)}, interpolate)
    assert full[0][0] > default[0][0]


class TupleDecay(nn.Module):
    """A (3,) and a (2, 2) state, each decaying at a learned rate."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor([0.5, 1.5], dtype=F64))
        self.w = nn.Parameter(torch.ones(7, dtype=F64))

    def forward(self, t, state):
        a, b = state
        return -self.k[0] * a * self.w[:3], -self.k[1] * b + 0.1 * self.w[3:].view(2, 2)


@pytest.mark.parametrize("interpolate", [False, True], ids=["backsolve", "interpolating"])
@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
def test_norm_receives_torchdiffeqs_tuple(tuple_state, interpolate):
    func = TupleDecay()
    y0 = (torch.ones(3, dtype=F64), torch.full((2, 2), 0.5, dtype=F64))
    if not tuple_state:
        y0 = torch.ones((), dtype=F64)
        func = lambda t, y: -func_k * y  # noqa: E731
    func_k = nn.Parameter(torch.tensor(0.7, dtype=F64))
    params = tuple(func.parameters()) if tuple_state else (func_k,)
    shapes = [()] + 2 * [tuple(p.shape) for p in (y0 if tuple_state else (y0,))] + [tuple(p.shape) for p in params]
    seen = []

    def norm(state):
        assert isinstance(state, tuple)
        seen.append(state)
        return max(x.abs().max() for x in state)

    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = odeint_adjoint(func, y0, t, adjoint_params=params, adjoint_options={"norm": norm, "interpolate": interpolate})
    sum(y.sum() for y in (ys if tuple_state else (ys,))).backward()
    assert seen and all([tuple(x.shape) for x in state] == shapes for state in seen)
    assert all(state[0].dtype == F64 and float(state[0]) == 0.0 for state in seen)  # dL/dt_0 is not integrated
    n_y = 2 if tuple_state else 1
    ys_zero = all(float(x.abs().max()) == 0.0 for state in seen for x in state[1 : 1 + n_y])
    assert ys_zero == interpolate  # y is read from the forward solve, not integrated, when interpolating


def test_norm_written_for_the_backward_state_is_told_of_augmented_norm():
    func = mlp(2, 4)
    y0 = torch.ones(3, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    kw = dict(adjoint_params=tuple(func.parameters()))
    ys = odeint_adjoint(
        lambda s, y: func(y), y0, t, adjoint_options={"norm": lambda s: torch.cat(s[:2]).abs().max()}, **kw
    )
    with pytest.raises(RuntimeError, match=r"adjoint_options\['augmented_norm'\]") as info:
        ys.sum().backward()
    message = str(info.value)
    assert "adjoint_options['norm'] failed (RuntimeError: " in message
    assert "(t, y, adj_y, *adj_params), t of shape ()" in message
    assert isinstance(info.value.__cause__, RuntimeError)

    def both():
        odeint_adjoint(lambda s, y: func(y), y0, t, adjoint_options={"norm": rms, "augmented_norm": rms}, **kw)

    with pytest.raises(ValueError, match="both 'norm' and 'augmented_norm'"):
        both()
    with pytest.raises(TypeError, match=r"adjoint_options\['augmented_norm'\] must be callable .* got str"):
        odeint_adjoint(lambda s, y: func(y), y0, t, adjoint_options={"augmented_norm": "rms"}, **kw)
    with pytest.raises(ValueError, match=r"adjoint_options\['augmented_norm'\] is not supported with .*per_sample"):
        odeint_adjoint(
            lambda s, y: func(y), y0, t, options={"per_sample": True}, adjoint_options={"augmented_norm": rms}, **kw
        )


# ------------------------------------------------------------------------------------------------
# 6-7. NFE counters and statistics.


def test_odefunc_counts_forward_and_backward_evaluations_with_adjoint():
    func = TimeMLP(dim=3, hidden=8, seed=13)
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64, requires_grad=True)
    sol = solve_adjoint(func, y0, t, rtol=1e-8, atol=1e-8)
    nfe_forward = func.nfe_forward
    assert nfe_forward > 0 and func.nfe_backward == 0
    assert nfe_forward == sol.stats.nfe

    sol.ys.pow(2).sum().backward()
    assert func.nfe_forward == nfe_forward
    assert func.nfe_backward > 0
    # One call of func per evaluation of the augmented dynamics, plus f(t_i, y_i) for dL/dt.
    assert func.nfe_backward == sol.adjoint_stats.nfe

    func.reset_nfe()
    assert (func.nfe_forward, func.nfe_backward) == (0, 0)


def test_odefunc_backprop_counts_nothing_in_backward():
    func = TimeMLP(dim=3, hidden=8, seed=14)
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    ys = odeint(func, y0, t, rtol=1e-8, atol=1e-8)
    nfe_forward = func.nfe_forward
    assert nfe_forward > 0
    ys.pow(2).sum().backward()
    assert func.nfe_forward == nfe_forward
    assert func.nfe_backward == 0


def test_adjoint_stats_filled_after_backward():
    func = TimeMLP(dim=3, hidden=8, seed=15)
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 4, dtype=F64)
    sol = solve_adjoint(func, y0, t, rtol=1e-8, atol=1e-8)
    assert sol.stats.nfe > 0 and sol.stats.n_accepted > 0
    assert sol.adjoint_stats is not None
    assert (sol.adjoint_stats.nfe, sol.adjoint_stats.n_accepted) == (0, 0)
    sol.ys.pow(2).sum().backward()
    stats = sol.adjoint_stats
    assert stats.nfe > 0 and stats.n_accepted > 0
    assert stats.n_steps == stats.n_accepted + stats.n_rejected
    # Each accepted or rejected dopri5 step (FSAL) costs at least 5 new evaluations.
    assert stats.nfe >= 5 * stats.n_steps
    assert solve(func, y0, t).adjoint_stats is None


@pytest.mark.parametrize("interpolate", [False, True])
def test_explicit_adjoint_carries_its_step_across_jumps_of_a(interpolate):
    # A loss at every output time makes a jump at each of them. An explicit method's step is no
    # less suited to the state after a jump than before it, so the backward solve carries it on:
    # one step per output interval here (11 steps, 77 evaluations), where restarting from the
    # initial-step heuristic after each jump takes two (20 steps, 140 evaluations).
    func = TimeMLP(dim=2, hidden=16, seed=21)
    torch.manual_seed(22)
    y0 = torch.randn(8, 2, dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 11, dtype=F64)
    kw = dict(rtol=1e-6, atol=1e-8, method="dopri5")
    sol = solve_adjoint(func, y0, t, adjoint_options={"interpolate": interpolate}, **kw)
    got = torch.autograd.grad(sol.ys.pow(2).sum(), (y0, *func.parameters()))
    bwd = sol.adjoint_stats
    assert bwd.n_accepted + bwd.n_rejected <= len(t) + 2, bwd
    ref = torch.autograd.grad(odeint(func, y0, t, **kw).pow(2).sum(), (y0, *func.parameters()))
    for g, r in zip(got, ref):
        assert_close_rel(g, r, 1e-5, "gradient")


# ------------------------------------------------------------------------------------------------
# 8. ODEBlock.


def test_odeblock_adjoint_and_backprop_agree():
    torch.manual_seed(16)
    z = torch.randn(5, 3, dtype=F64)
    results = {}
    for adjoint in (True, False):
        block = ODEBlock(TimeMLP(dim=3, hidden=8, seed=17), t=(0.0, 1.0), rtol=1e-10, atol=1e-10, adjoint=adjoint)
        zi = z.clone().requires_grad_(True)
        out = block(zi)
        assert out.shape == z.shape
        nfe_forward = block.nfe_forward
        out.pow(2).sum().backward()
        assert block.nfe_forward == nfe_forward > 0
        if adjoint:
            assert block.nfe_backward > 0
        else:
            assert block.nfe_backward == 0
        results[adjoint] = (out.detach(), zi.grad, [p.grad for p in block.parameters()])
    (out_a, gz_a, gp_a), (out_b, gz_b, gp_b) = results[True], results[False]
    assert_close_rel(out_a, out_b, 1e-12, "ODEBlock output")
    assert_close_rel(gz_a, gz_b, 1e-6, "ODEBlock dL/dz")
    for i, (a, b) in enumerate(zip(gp_a, gp_b)):
        assert_close_rel(a, b, 1e-6, f"ODEBlock dL/dparam[{i}]")


def test_odeblock_nfe_without_odefunc_is_zero():
    block = ODEBlock(nn.Sequential(), adjoint=False)  # no counters on func
    assert (block.nfe_forward, block.nfe_backward) == (0, 0)


def test_odeblock_nfe_counts_the_last_pass_as_documented():
    block = ODEBlock(TimeMLP(dim=3, hidden=8, seed=18), adjoint=True)
    z = torch.randn(2, 3, dtype=F64)
    block(z)
    once = block.nfe_forward
    block(z)
    assert block.nfe_forward == once


# ------------------------------------------------------------------------------------------------
# 9. The seed claim: a residual network is Euler's method.


def residual_stack(f, h, n_blocks: int):
    """``n_blocks`` weight-tied residual blocks ``h <- h + (1/N) f(h)``."""
    for _ in range(n_blocks):
        h = h + f(h) / n_blocks
    return h


def test_residual_stack_is_euler_and_converges_at_first_order():
    f = mlp(3, 16, seed=19)
    torch.manual_seed(20)
    h0 = torch.randn(8, 3, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with torch.no_grad():
        # The same arithmetic, step by step: equal up to one rounding of 1/N per block.
        for n in (1, 2, 7, 10, 64, 100):
            euler = odeint(lambda s, y: f(y), h0, t, method="euler", options={"step_size": 1.0 / n})[-1]
            res = residual_stack(f, h0, n)
            assert float((euler - res).abs().max()) <= 1e-15 * max(1.0, float(res.abs().max())), n
        # With the fused update the stepper uses (h + alpha * k) and a step 1/N that is exact in
        # binary, the two are bitwise equal.
        for n in (1, 4, 64):
            h = h0
            for _ in range(n):
                h = torch.add(h, f(h), alpha=1.0 / n)
            euler = odeint(lambda s, y: f(y), h0, t, method="euler", options={"step_size": 1.0 / n})[-1]
            assert torch.equal(h, euler), n

        # Deeper stacks approach the continuous layer: error ~ 1/N.
        exact = odeint(lambda s, y: f(y), h0, t, method="dopri5", rtol=1e-12, atol=1e-12)[-1]
        ns = [8, 16, 32, 64, 128, 256]
        errors = [float((residual_stack(f, h0, n) - exact).abs().max()) for n in ns]
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    slope = np.polyfit(np.log(ns), np.log(errors), 1)[0]
    assert 0.8 <= -slope <= 1.2, (slope, errors)


# ------------------------------------------------------------------------------------------------
# 10. adjoint_params whose graph outlives one evaluation of func (neural CDEs, torchcde's pattern).


class SmoothPath:
    """A control path ``X(t) = Σ_k c_k sin(ω_k t)`` built once from its coefficients ``c (K, C)``.

    As torchcde's interpolations do, it derives what its derivative reads when it is built:
    ``ω_k c_k`` is one autograd node (saving ``ω``) that every evaluation of ``dX/dt`` goes
    through, so differentiating one evaluation with respect to ``c`` traverses a graph that
    outlives it.
    """

    def __init__(self, coeffs: torch.Tensor):
        self.omega = torch.arange(1, coeffs.shape[0] + 1, dtype=coeffs.dtype)  # (K,)
        self.dcoeffs = coeffs * self.omega[:, None]  # (K, C), computed once

    def derivative(self, t: torch.Tensor) -> torch.Tensor:
        """``dX/dt`` at ``t``: one time, or one per sample (per-sample clocks); ``(n_t, C)``."""
        return torch.cos(t.reshape(-1, 1) * self.omega) @ self.dcoeffs


class CDEFunc(nn.Module):
    """``dz/dt = tanh(W z + b) dX/dt``, the vector field of a neural CDE (Kidger et al. 2020),
    ``z (B, H)``, ``W z + b`` read as ``(B, H, C)``."""

    def __init__(self, path: SmoothPath, hidden: int, channels: int, seed: int = 30):
        super().__init__()
        torch.manual_seed(seed)
        self.path, self.hidden, self.channels = path, hidden, channels
        self.lin = nn.Linear(hidden, hidden * channels).to(F64)

    def forward(self, t, z):
        g = torch.tanh(self.lin(z)).view(-1, self.hidden, self.channels)
        return (g * self.path.derivative(t)[:, None, :]).sum(-1)


def cde_problem(leaf_param: bool = False):
    """``(func, x, coeffs, params, batches, t)``: the coefficients are a differentiable function of the
    data ``x`` (a leaf that requires grad), computed once; func closes over the path built from them.
    ``leaf_param``: list ``x`` itself in ``params`` instead of ``coeffs`` (the graph is shared all the same)."""
    torch.manual_seed(31)
    x = torch.randn(6, 2, dtype=F64, requires_grad=True)  # observations of a 2-channel series
    # (5, 2): the increments of the series. Their own graph saves no tensor, so a training loop can go
    # back through it on every iteration without retain_graph (as with plain backpropagation).
    coeffs = x[1:] - x[:-1]
    func = CDEFunc(SmoothPath(coeffs), hidden=3, channels=2)
    params = tuple(func.parameters()) + ((x,) if leaf_param else (coeffs,))
    batches = [torch.randn(2, 3, dtype=F64) for _ in range(2)]
    return func, x, coeffs, params, batches, torch.linspace(0.0, 1.0, 3, dtype=F64)


def halving(path: SmoothPath) -> Event:
    """A crossing of ``z_0 = level`` halves ``z_0``; the level is read from the path's derived
    coefficients, so the event's adjoint goes through their shared node as func's does."""
    level = 0.35 + 0.01 * path.dcoeffs[0, 0]
    return Event(
        lambda s, z: z[..., 0] - level, terminal=False, reset=lambda s, z: torch.cat([0.5 * z[..., :1], z[..., 1:]], -1)
    )


PER_SAMPLE = {"per_sample": True}
SHARED_GRAPH_MODES = {  # (keywords of both solves, of the adjoint's only, relative tolerance on the gradients)
    "backsolve": ({}, {}, 1e-6),
    "interpolating": ({}, dict(adjoint_options={"interpolate": True}), 1e-6),
    # An implicit backward method: its Jacobian (one batched backward) differentiates func as well.
    "interpolating-implicit": ({}, dict(adjoint_method="kvaerno5", rtol=1e-7, atol=1e-7), 1e-5),
    "per-sample": (dict(options=PER_SAMPLE), {}, 1e-6),
    "per-sample-events": (dict(options=PER_SAMPLE, events=halving), {}, 1e-6),
}


@pytest.mark.parametrize(
    "mode, leaf_param",
    [(mode, False) for mode in SHARED_GRAPH_MODES] + [("backsolve", True)],
    ids=[*SHARED_GRAPH_MODES, "backsolve-leaf"],
)
def test_adjoint_params_with_a_graph_shared_between_calls(mode, leaf_param):
    func, x, coeffs, params, batches, t = cde_problem(leaf_param)
    both, adjoint_only, tol = SHARED_GRAPH_MODES[mode]
    if "events" in both:
        both = dict(both, events=both["events"](func.path))
    leaves = (x, *func.parameters())
    names = ["x", "W", "b"]

    def adjoint_loss(z0):
        kw = dict(method="dopri5", rtol=1e-8, atol=1e-8, adjoint_params=params, **both) | adjoint_only
        return solve_adjoint(func, z0, t, **kw).ys.pow(2).sum()

    def backprop_loss(z0):
        return solve(func, z0, t, method="dopri5", rtol=1e-10, atol=1e-10, **both).ys.pow(2).sum()

    # Two training iterations on the same coefficients: a loss summing two solves, then one solve;
    # one backward each, the gradients accumulating in .grad.
    (adjoint_loss(batches[0]) + adjoint_loss(batches[1])).backward()
    adjoint_loss(batches[0]).backward()

    # Backpropagation through the solver, tight. Its graph includes the path's shared node, which
    # the adjoint's solves must still find intact after it: retained.
    ref = torch.autograd.grad(2 * backprop_loss(batches[0]) + backprop_loss(batches[1]), leaves, retain_graph=True)
    for p, r, name in zip(leaves, ref, names):
        assert_close_rel(p.grad, r, tol, f"{mode}: gradient to {name}")


def test_shared_graph_adjoint_keeps_nothing_between_iterations():
    # The backward solve keeps each evaluation's graph through its vector-Jacobian product
    # (retain_graph, for the part shared with the coefficients): all of it must be gone when
    # backward returns, iteration after iteration. What autograd saves is counted alive as in
    # saved_bytes above, but held detached: a saved output holding its own grad_fn would make a
    # cycle through the graph that only freeing the saved tensors breaks, so the count would grow
    # under retain_graph because of the hook itself. Outputs of func are watched by weak references.
    held: list[weakref.ref] = []
    outputs: list[weakref.ref] = []

    def pack(x):
        h = _Held(x.detach())
        held.append(weakref.ref(h))
        return h

    def alive() -> int:
        return sum(ref() is not None for ref in held)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.tensor):
        func, x, coeffs, params, batches, t = cde_problem()
        forward = func.forward

        def watched(s, z):
            out = forward(s, z)
            outputs.append(weakref.ref(out))
            return out

        func.forward = watched
        before = alive()  # the graph of the path's derivative coefficients, shared by every evaluation
        assert before > 0
        counts = []
        for z0 in batches * 2:
            odeint_adjoint(func, z0, t, rtol=1e-8, atol=1e-8, adjoint_params=params).pow(2).sum().backward()
            counts.append(alive())
            assert len(outputs) > 0 and all(ref() is None for ref in outputs)
    assert counts == [before] * len(counts)


# ------------------------------------------------------------------------------------------------
# Second derivatives (double backward): exact where the mode records a graph, refused elsewhere.


def _hvp_problem(with_t: bool = False):
    """A 2x2 tanh field ``dy/dt = tanh(W y + b)`` in float64, the tensors differentiated (``W, b,
    y0`` and, ``with_t``, the output times) and a direction ``v`` for the Hessian-vector product."""
    gen = torch.Generator().manual_seed(25)
    W = torch.randn(2, 2, dtype=F64, generator=gen).requires_grad_(True)
    b = torch.randn(2, dtype=F64, generator=gen).requires_grad_(True)
    y0 = torch.tensor([[0.5, -0.3]], dtype=F64, requires_grad=True)  # a batch of one, for per_sample too
    params = (W, b, y0)
    if with_t:
        params += (torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=F64, requires_grad=True),)
    v = tuple(torch.randn(p.shape, dtype=F64, generator=gen) for p in params)

    def f(t, y):
        return torch.tanh(y @ W.T + b)

    return f, params, v


def _hvp_loss(solver, f, params, **kw):
    W, b, y0 = params[:3]
    t = params[3] if len(params) > 3 else torch.linspace(0.0, 1.0, 4, dtype=F64)
    if solver is odeint_adjoint:
        kw["adjoint_params"] = (W, b)
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    ys = solver(f, y0, t, **kw)
    return (ys**2).sum() + ys[-1].sin().sum()  # a nonlinear loss: ∂L/∂y depends on y


def _hvp(solver, f, params, v, **kw):
    """``H v`` by double backward: the gradient of ``g · v`` where ``g`` is a differentiable gradient."""
    g = torch.autograd.grad(_hvp_loss(solver, f, params, **kw), params, create_graph=True)
    gv = sum((gi * vi).sum() for gi, vi in zip(g, v))
    return torch.cat([h.reshape(-1) for h in torch.autograd.grad(gv, params)])


def _hvp_by_differences(solver, f, params, v, eps=1e-5, **kw):
    """``(g(θ + εv) - g(θ - εv)) / 2ε`` of ``solver``'s first gradient ``g`` (error O(ε²))."""

    def g_at(sign):
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(sign * eps * d)
        try:
            loss = _hvp_loss(solver, f, params, **kw)
            return torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)])
        finally:
            with torch.no_grad():
                for p, d in zip(params, v):
                    p.sub_(sign * eps * d)

    return (g_at(1.0) - g_at(-1.0)) / (2 * eps)


def _rel(got, expected):
    return float(torch.linalg.vector_norm(got - expected) / torch.linalg.vector_norm(expected))


@pytest.mark.parametrize("with_t", [False, True], ids=["theta_y0", "theta_y0_t"])
@pytest.mark.parametrize("options", [None, {"checkpoint": True}], ids=["backprop", "checkpoint"])
def test_hessian_vector_product_through_odeint_matches_differences(options, with_t):
    """Output times included: the solution's dependence on t[0] and t[i] enters through zero-length
    midpoint steps (api.py), whose second derivatives are the solution's."""
    f, params, v = _hvp_problem(with_t)
    expected = _hvp_by_differences(odeint, f, params, v)
    assert _rel(_hvp(odeint, f, params, v, options=options), expected) < 1e-6


@pytest.mark.parametrize("with_t", [False, True], ids=["theta_y0", "theta_y0_t"])
def test_hessian_vector_product_through_the_backsolve_adjoint_matches_differences(with_t):
    """Under create_graph=True the backsolve adjoint records its backward solve: double backward is
    the derivative of the gradient it computes, so at tight tolerances it matches central
    differences of backprop's gradient (the HVP of the ODE), output times included."""
    f, params, v = _hvp_problem(with_t)
    expected = _hvp_by_differences(odeint, f, params, v)
    assert _rel(_hvp(odeint_adjoint, f, params, v), expected) < 1e-6


def test_recorded_backsolve_gives_the_same_first_gradient():
    """Recording the backward solve (create_graph=True) changes what is kept, not what is computed:
    the first-order gradient is the one create_graph=False gives, to the last bit."""
    f, params, _ = _hvp_problem(with_t=True)
    kw = {"rtol": 1e-6, "atol": 1e-8}
    plain = torch.autograd.grad(_hvp_loss(odeint_adjoint, f, params, **kw), params)
    recorded = torch.autograd.grad(_hvp_loss(odeint_adjoint, f, params, **kw), params, create_graph=True)
    assert all(r.requires_grad for r in recorded)
    for a, r in zip(plain, recorded):
        assert torch.equal(a, r.detach())


@pytest.mark.parametrize(
    "kw, family",
    [
        ({"adjoint_options": {"interpolate": True}}, "interpolating adjoint"),
        ({"options": {"per_sample": True}}, "per-sample adjoint"),
        ({"adjoint_method": "rodas5p", "adjoint_options": {"interpolate": False}}, "implicit adjoint_method"),
    ],
    ids=["interpolating", "per_sample", "implicit_backsolve"],
)
def test_double_backward_through_an_adjoint_without_a_graph_is_refused(kw, family):
    """These backward solves take vector-Jacobian products without a graph: a gradient computed
    with create_graph=True would differentiate wrongly, so it is refused, naming what works."""
    f, params, v = _hvp_problem()
    loss = _hvp_loss(odeint_adjoint, f, params, **kw)
    with pytest.raises(ValueError, match=rf"create_graph=True.*{family}.*odeint \(backprop.*checkpoint.*backsolve"):
        torch.autograd.grad(loss, params, create_graph=True)
    # The first-order gradient is unaffected.
    g = torch.autograd.grad(_hvp_loss(odeint_adjoint, f, params, **kw), params)
    g_ref = torch.autograd.grad(_hvp_loss(odeint, f, params), params)
    for a, r in zip(g, g_ref):
        assert torch.allclose(a, r, rtol=1e-6, atol=1e-8)
