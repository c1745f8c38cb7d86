"""Forward-mode derivatives through the solvers: ``torch.autograd.forward_ad`` dual tensors and
``torch.func.jvp``, checked against backpropagation's vector-Jacobian products and central finite
differences (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import neuralode
from neuralode import odeint
from neuralode.solvers.api import forward_mode_methods

A = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=torch.float64)
Y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
V = torch.tensor([0.3, -0.7], dtype=torch.float64)
T = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
SOLVER_METHODS = [m for m in neuralode.METHODS if m != "scipy_solver"]
TRANSFORM_REFUSED = [m for m in SOLVER_METHODS if m not in forward_mode_methods()]


def f(t, y):
    return 0.1 * torch.sin(t) + y @ A.T - 0.1 * y**3


def options(method):
    return None if getattr(neuralode.METHODS[method], "adaptive", True) else {"step_size": 0.1}


def solver(method, rtol=1e-5, atol=1e-7):
    return lambda y: odeint(f, y, T, method=method, options=options(method), rtol=rtol, atol=atol)


def backprop_jvp(sol, y0, v):
    return torch.autograd.functional.jacobian(sol, y0) @ v


@pytest.mark.parametrize("method", SOLVER_METHODS)
def test_dual_tensor_matches_backprop(method):
    """The tangent of a dual ``y0`` is the derivative of the discrete solution, the one backpropagation
    differentiates: equal to rounding for every method (the implicit ones included, whose Jacobians carry
    their own tangents)."""
    sol = solver(method)
    with fwAD.dual_level():
        out = sol(fwAD.make_dual(Y0, V))
        primal, tangent = fwAD.unpack_dual(out)
    assert tangent is not None
    assert not primal.requires_grad  # forward mode alone leaves no autograd graph behind
    torch.testing.assert_close(primal, sol(Y0), rtol=0, atol=0)
    torch.testing.assert_close(tangent, backprop_jvp(sol, Y0, V), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", forward_mode_methods())
def test_func_jvp_matches_backprop(method):
    sol = solver(method)
    out, tangent = torch.func.jvp(sol, (Y0,), (V,))
    torch.testing.assert_close(out, sol(Y0), rtol=0, atol=0)
    torch.testing.assert_close(tangent, backprop_jvp(sol, Y0, V), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4", "rodas5p", "radau5", "kvaerno5"])
def test_jvp_matches_central_differences(method):
    sol = solver(method, rtol=1e-10, atol=1e-12)
    if method in forward_mode_methods():
        _, tangent = torch.func.jvp(sol, (Y0,), (V,))
    else:
        with fwAD.dual_level():
            tangent = fwAD.unpack_dual(sol(fwAD.make_dual(Y0, V))).tangent
    eps = 1e-6
    fd = (sol(Y0 + eps * V) - sol(Y0 - eps * V)) / (2 * eps)
    assert float((tangent - fd).abs().max() / fd.abs().max()) < 1e-6


@pytest.mark.parametrize("method", ["dopri5", "rodas5p"])
def test_parameter_tangent(method):
    """A tangent in the parameters (``torch.func.functional_call`` with dual parameters)."""
    lin = torch.nn.Linear(2, 2).double()
    params = {k: p.detach() for k, p in lin.named_parameters()}
    dirs = {k: torch.randn_like(p, generator=torch.Generator().manual_seed(1)) for k, p in params.items()}

    def run(ps):
        return odeint(
            lambda t, y: torch.tanh(torch.func.functional_call(lin, ps, (y,))),
            Y0,
            T,
            method=method,
            rtol=1e-9,
            atol=1e-11,
        )

    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(run({k: fwAD.make_dual(p, dirs[k]) for k, p in params.items()})).tangent
    eps = 1e-6
    fd = run({k: p + eps * dirs[k] for k, p in params.items()}) - run({k: p - eps * dirs[k] for k, p in params.items()})
    fd = fd / (2 * eps)
    assert float((tangent - fd).abs().max() / fd.abs().max()) < 1e-6
    if method == "dopri5":
        _, tangent_func = torch.func.jvp(run, (params,), (dirs,))
        torch.testing.assert_close(tangent_func, tangent, rtol=1e-12, atol=1e-14)


def test_time_tangent():
    """A tangent in the output times and the start time: ``dy(t_i)/dt_i = f(t_i, y(t_i))`` and
    ``dy(t_i)/dt_0 = -J(t_i, t_0) f(t_0, y0)``, as for gradients."""
    dt = torch.tensor([0.4, -0.2, 0.7], dtype=torch.float64)

    def run(t):
        return odeint(f, Y0, t, rtol=1e-10, atol=1e-12)

    _, tangent = torch.func.jvp(run, (T,), (dt,))
    eps = 1e-6
    fd = (run(T + eps * dt) - run(T - eps * dt)) / (2 * eps)
    assert float((tangent - fd).abs().max() / fd.abs().max()) < 1e-6


@pytest.mark.parametrize("method", TRANSFORM_REFUSED)
def test_func_transform_refused_by_implicit_methods(method):
    with pytest.raises(TypeError, match=f"method={method!r} cannot run inside a torch.func transform.*dopri5"):
        torch.func.jvp(solver(method), (Y0,), (V,))


def test_scipy_solver_refuses_forward_mode():
    pytest.importorskip("scipy")
    sol = solver("scipy_solver")
    with pytest.raises(TypeError, match="scipy_solver.*forward-mode"):
        torch.func.jvp(sol, (Y0,), (V,))
    with fwAD.dual_level(), pytest.raises(TypeError, match="scipy_solver.*forward-mode"):
        sol(fwAD.make_dual(Y0, V))
