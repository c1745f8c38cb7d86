"""A float32 solve on a device against the same solve in float64 on the CPU, and both against a closed form.

Shared by ``tests/test_method_conformance.py`` (every registered method, on the CPU and, where there is one,
on CUDA) and ``benchmarks/gpu_check.py`` (the same check as a table, before its timings). The problem is a
damped rotation ``y' = A y``, ``A = [[-a, -ω], [ω, -a]]``, whose solution is ``e^{-a t} R(ω t) y0``; it is
smooth and non-stiff, so every method reaches the tolerance with few steps, and its rotation mixes the
components, so a wrong sign or a swapped stage shows at once.

Distances are in tolerance units, ``max |y − y_ref| / (tol + tol |y_ref|)``. A float32 solve passes when it
is within :data:`PASS_UNITS` of the float64 CPU solve, or, for an adaptive method (whose float32 error
estimate may choose other steps than the float64 one), when it is as close to the closed form as the
float64 solve: ``err32 ≤ 2 err64 + PASS_UNITS``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

import neuralode
from neuralode import METHODS

TOL = 1e-5  # rtol = atol of the adaptive methods; the unit of the distances
PASS_UNITS = 10.0
GRAD_REL = 1e-3  # float32 gradients within this relative distance of the float64 ones
T_END = 5.0


class DampedRotation(nn.Module):
    """``y' = A y`` with ``A = [[-a, -ω], [ω, -a]]`` on states ``(batch, 2)``; ``a`` and ``ω`` are parameters."""

    def __init__(self, a: float = 0.1, omega: float = 2.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.omega = nn.Parameter(torch.tensor(omega))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v = y[..., 0], y[..., 1]
        return torch.stack([-self.a * x - self.omega * v, self.omega * x - self.a * v], dim=-1)

    def exact(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(len(t), batch, 2)`` in float64 on the CPU: ``e^{-a t} R(ω t) y0``."""
        a, w = self.a.detach().double().cpu(), self.omega.detach().double().cpu()
        t = t.double().cpu()[:, None]
        c, s, decay = torch.cos(w * t), torch.sin(w * t), torch.exp(-a * t)  # (n_t, 1)
        x0, v0 = y0.double().cpu()[:, 0], y0.double().cpu()[:, 1]  # (batch,)
        return torch.stack([decay * (c * x0 - s * v0), decay * (s * x0 + c * v0)], dim=-1)


@dataclasses.dataclass(frozen=True)
class Case:
    """One solve to check: ``label`` names it, ``steps`` says how it is stepped, ``kwargs`` go to ``solve``."""

    label: str
    steps: str
    adaptive: bool
    kwargs: dict


def case(name: str, *, per_sample: bool = False, tol: float = TOL) -> Case:
    """The solve of method ``name``: adaptive methods at ``rtol = atol = tol``; fixed-grid ones with ``step_size``
    0.01, implicit ones 0.05 (a Newton iteration per step; their accuracy is not the question here)."""
    caps = METHODS[name].capabilities
    if caps.adaptive:
        opts = {"per_sample": True} if per_sample else {}
        label = f"{name}, per_sample" if per_sample else name
        steps = f"adaptive {tol:g}" + (", per sample" if per_sample else "")
        return Case(label, steps, True, dict(rtol=tol, atol=tol, method=name, options=opts))
    if per_sample:
        raise ValueError(f"method {name!r} has no per-sample clock (it is not adaptive)")
    h = 0.05 if caps.implicit else 0.01
    opts: dict[str, Any] = {"step_size": h}
    if name == "explicit_adams":
        # At its default max_order (orders up to 11) Adams-Bashforth is unstable on this oscillator at
        # h = 0.01, as torchdiffeq 0.2.5's is (see neuralode.solvers.methods.adams).
        opts["max_order"] = 6
    steps = f"fixed, h = {h:g}" + (", max_order 6" if "max_order" in opts else "")
    return Case(name, steps, False, dict(method=name, options=opts))


def cases(tol: float = TOL) -> list[Case]:
    """Every registered method that runs in the solvers' loop (not ``own_driver``: scipy's runs on the CPU only),
    then the per-sample clock of every method that has one."""
    names = [n for n, m in METHODS.items() if not m.capabilities.own_driver]
    return [case(n, tol=tol) for n in names] + [
        case(n, per_sample=True, tol=tol) for n in names if METHODS[n].capabilities.per_sample
    ]


def units(y: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> float:
    """``max |y − ref| / (tol + tol |ref|)``, in float64 on the CPU."""
    y, ref = y.detach().double().cpu(), ref.detach().double().cpu()
    return float(((y - ref).abs() / (tol + tol * ref.abs())).max())


@dataclasses.dataclass(frozen=True)
class Agreement:
    """The float32 device solve against the float64 CPU solve (``units``) and both against the closed form
    (``err32``, ``err64``), in tolerance units; ``nfe32``, ``nfe64`` their evaluation counts (per-sample
    solves: a ``(batch,)`` tensor); ``on_device`` whether the float32 solution is on the device asked for."""

    units: float
    err32: float
    err64: float
    nfe32: Any
    nfe64: Any
    on_device: bool
    adaptive: bool

    @property
    def passed(self) -> bool:
        close = self.units <= PASS_UNITS or (self.adaptive and self.err32 <= 2 * self.err64 + PASS_UNITS)
        return math.isfinite(self.units) and self.on_device and close


def problem(batch: int, n_outputs: int, t_end: float = T_END) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y0, t)`` in float64: a seeded ``(batch, 2)`` initial state and ``n_outputs`` times on ``[0, t_end]``."""
    y0 = torch.randn(batch, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return y0, torch.linspace(0.0, t_end, n_outputs, dtype=torch.float64)


def check_solve(
    c: Case, device: torch.device, batch: int, n_outputs: int, tol: float = TOL, t_end: float = T_END
) -> Agreement:
    """Solves ``c`` on ``[0, t_end]`` in float32 on ``device`` and in float64 on the CPU and measures them in units
    of ``tol`` (see :class:`Agreement`)."""
    y0, t = problem(batch, n_outputs, t_end)
    cpu_func, dev_func = DampedRotation().double(), DampedRotation().to(device)
    exact = cpu_func.exact(y0, t)
    with torch.no_grad():
        ref = neuralode.solve(cpu_func, y0, t, **c.kwargs)
        sol = neuralode.solve(dev_func, y0.float().to(device), t.float().to(device), **c.kwargs)
    return Agreement(
        units=units(sol.ys, ref.ys, tol),
        err32=units(sol.ys, exact, tol),
        err64=units(ref.ys, exact, tol),
        nfe32=sol.stats.nfe,
        nfe64=ref.stats.nfe,
        on_device=sol.ys.device.type == device.type,
        adaptive=c.adaptive,
    )


def gradient_distance(
    mode: str, device: torch.device, batch: int, n_outputs: int, tol: float = TOL, t_end: float = T_END
) -> float:
    """``max |g32 − g64| / max |g64|`` for the gradient ``g`` of ``sum(ys²)`` with respect to ``y0``, ``a`` and
    ``ω``, by ``odeint`` (``mode="backprop"``) or ``odeint_adjoint`` (``"adjoint"``) with dopri5 on ``[0, t_end]``: float32 on
    ``device`` against float64 on the CPU. The gradient's machinery (autograd through the steps, the adjoint's
    backward solve) is the same for every method; ``test_method_conformance`` checks each method's gradients
    in float64."""
    solver = {"backprop": neuralode.odeint, "adjoint": neuralode.odeint_adjoint}[mode]
    y0, t = problem(batch, n_outputs, t_end)
    grads = []
    for dtype, dev in ((torch.float64, torch.device("cpu")), (torch.float32, device)):
        func = DampedRotation().to(dtype=dtype, device=dev)
        y0g = y0.to(dtype=dtype, device=dev).clone().requires_grad_(True)
        ys = solver(func, y0g, t.to(dtype=dtype, device=dev), rtol=tol, atol=tol, method="dopri5")
        ys.pow(2).sum().backward()
        grads.append(torch.cat([y0g.grad.flatten(), func.a.grad.flatten(), func.omega.grad.flatten()]).double().cpu())
    return float((grads[1] - grads[0]).abs().max() / grads[0].abs().max())
