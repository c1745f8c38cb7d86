"""Gradients through the stiff methods, in float64 against central finite differences: backpropagation
through rodas5p / rosenbrock23 steps on Robertson's rate constants, and odeint_adjoint with a Rosenbrock
backward solve."""

from __future__ import annotations

import pytest
import torch

from neuralode import METHODS, odeint, odeint_adjoint

F64 = torch.float64


class Robertson(torch.nn.Module):
    """Robertson's kinetics with learnable log rate constants (k1, k2, k3) = (0.04, 3e7, 1e4)."""

    def __init__(self):
        super().__init__()
        self.log_k = torch.nn.Parameter(torch.log(torch.tensor([0.04, 3e7, 1e4], dtype=F64)))

    def forward(self, t, y):
        k1, k2, k3 = torch.exp(self.log_k)
        y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
        return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2**2, k2 * y2**2], dim=-1)


T = torch.tensor([0.0, 1e-3, 0.1, 1.0], dtype=F64)
Y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
W = torch.tensor([1.0, 1e4, 1.0], dtype=F64)  # y2 is ~1e-5: weigh it so that it counts in the loss


def _loss(model, method, rtol, solver=odeint, **kw):
    ys = solver(model, Y0, T, rtol=rtol, atol=rtol * 1e-6, method=method, **kw)
    return (ys[1:] * W).sum()


def _central_differences(method, rtol, delta=1e-5):
    model = Robertson()
    base = model.log_k.detach().clone()
    out = []
    with torch.no_grad():
        for i in range(3):
            e = torch.zeros(3, dtype=F64)
            e[i] = delta
            model.log_k.copy_(base + e)
            up = _loss(model, method, rtol)
            model.log_k.copy_(base - e)
            down = _loss(model, method, rtol)
            out.append(float((up - down) / (2 * delta)))
    return torch.tensor(out, dtype=F64)


# Listed by hand: the two Rosenbrock methods, each at a tolerance its order reaches and with its own bound (finite
# differences on Robertson cost 8-19 s a method); every adaptive stiff method's backprop is checked against the
# checkpointed one below (ADAPTIVE_STIFF, from the registry).
@pytest.mark.parametrize("method,rtol,bound", [("rodas5p", 1e-9, 1e-5), ("rosenbrock23", 1e-5, 5e-3)])
def test_backprop_through_stiff_steps_matches_finite_differences(method, rtol, bound):
    model = Robertson()
    _loss(model, method, rtol).backward()
    grad = model.log_k.grad
    fd = _central_differences(method, rtol)
    rel = ((grad - fd).abs() / fd.abs()).max()
    assert rel < bound, (grad, fd)
    # The gradients are O(0.1-1): a test that cannot fail would pass zeros.
    assert fd.abs().min() > 1e-2


def test_jacobian_dependence_is_part_of_the_gradient():
    """Detaching J (treating it as a constant) gives a visibly different, wrong gradient: the test above
    therefore checks that the derivative of J with respect to the state and the rates is included."""
    from neuralode.solvers.methods import jacobian

    model = Robertson()
    _loss(model, "rodas5p", 1e-9).backward()
    exact = model.log_k.grad.clone()
    original = jacobian.autograd_linearisation

    def detached(*args, **kwargs):
        return original(*args, **{**kwargs, "create_graph": False})

    jacobian_patch = pytest.MonkeyPatch()
    import neuralode.solvers.methods.rosenbrock as rosenbrock

    jacobian_patch.setattr(rosenbrock, "autograd_linearisation", detached)
    try:
        model.log_k.grad = None
        _loss(model, "rodas5p", 1e-9).backward()
        frozen = model.log_k.grad.clone()
    finally:
        jacobian_patch.undo()
    assert ((frozen - exact).abs() / exact.abs()).max() > 1e-3


class StiffLinear(torch.nn.Module):
    """y' = A y with eigenvalues -1 and -rate (rate learnable), mildly stiff over a short span, so that the
    adjoint's backward re-solve of y (which runs the decaying modes backwards, where they grow) stays accurate."""

    def __init__(self):
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(200.0, dtype=F64))
        self.mix = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, t, y):
        a = torch.stack([torch.stack([-1.0 + 0 * self.mix, self.mix]), torch.stack([0 * self.mix, -self.rate])])
        return y @ a.T


def test_adjoint_with_rosenbrock_backward_solve():
    model = StiffLinear()
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.tensor([0.0, 0.01, 0.03], dtype=F64)

    def loss(solver, **kw):
        return (solver(model, y0, t, rtol=1e-10, atol=1e-12, method="rodas5p", **kw)[1:] ** 2).sum()

    loss(odeint).backward()
    bp = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    loss(odeint_adjoint, adjoint_method="rodas5p").backward()
    adj = [p.grad.clone() for p in model.parameters()]
    for g_bp, g_adj in zip(bp, adj):
        assert torch.allclose(g_adj, g_bp, rtol=1e-6, atol=1e-10), (g_bp, g_adj)
    assert all(float(g.abs()) > 1e-3 for g in bp)


# Every adaptive method that forms Jacobians, read from the registry: a new stiff method is tested by
# being registered.
ADAPTIVE_STIFF = [n for n, m in METHODS.items() if m.capabilities.implicit and m.capabilities.adaptive]


@pytest.mark.parametrize("method", ADAPTIVE_STIFF)
def test_checkpointed_stiff_steps_give_the_backprop_gradient(method):
    """options={"checkpoint": True} recomputes each step in backward; the Rosenbrock steps' recomputation
    must take the branches of the forward (the first Jacobian's coupling check, df/dt by forward mode or
    not), which the stepper's memo had moved on from: torch.utils.checkpoint raised "a different number of
    tensors was saved" for rodas5p and rosenbrock23."""
    y0 = torch.stack([Y0, torch.tensor([0.9, 0.0, 0.1], dtype=F64)])  # a batch: the coupling check runs
    grads = []
    for options in ({}, {"checkpoint": True}):
        model = Robertson()
        ys = odeint(model, y0, T, rtol=1e-6, atol=1e-12, method=method, options=options)
        (ys[1:] * W).sum().backward()
        grads.append(model.log_k.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0)
