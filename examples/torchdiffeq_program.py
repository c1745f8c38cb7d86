"""A program written for torchdiffeq, run unmodified on neuralode through the import alias.

The program below imports ``torchdiffeq`` and uses it as torchdiffeq's own ``learn_physics``
example does: a falling ball is integrated event by event with ``odeint_event``, and the event
function returns exact zeros after the last observed time ``T`` so that the solve stops there.
``neuralode.install_torchdiffeq_alias()`` makes ``import torchdiffeq`` (and the
``torchdiffeq._impl`` imports programs use to list methods) give neuralode's modules. The
program then takes gradients of the bounce times (against their closed form), a Hessian-vector
product through ``odeint_adjoint`` (against central differences of gradients) and a forward-mode
directional derivative with ``torch.func.jvp``.

    python examples/torchdiffeq_program.py [--out torchdiffeq_program_out]

Writes ``metrics.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import neuralode

neuralode.install_torchdiffeq_alias()

import torchdiffeq  # noqa: E402  (neuralode's modules, under torchdiffeq's names)
from torchdiffeq._impl.odeint import SOLVERS  # noqa: E402

G = 9.81
F64 = torch.float64


def bounce_times(h0: torch.Tensor, e: float, T: float) -> list[torch.Tensor]:
    """The ball's floor hits up to ``T`` by ``odeint_event``, one call per bounce, the event
    function returning zeros after ``T`` (the learn_physics idiom): the last call stops at ``T``."""

    def gravity(t, y):
        return torch.stack([y[1], -G * torch.ones_like(y[1])])

    def floor(t, y):
        if t > T:
            return torch.zeros_like(y[0])
        return y[0]

    t0, y = torch.tensor(0.0, dtype=F64), torch.stack([h0, torch.zeros_like(h0)])
    times = []
    while True:
        t0, ys = torchdiffeq.odeint_event(gravity, y, t0, event_fn=floor, method="dopri5", rtol=1e-10, atol=1e-12)
        times.append(t0)
        if float(t0.detach()) >= T - 1e-9:
            return times
        y = torch.stack([torch.zeros_like(ys[-1][0]), -e * ys[-1][1]])  # on the floor, velocity reversed and shrunk


def closed_form_times(h0: float, e: float, T: float) -> list[float]:
    """Bounce times of the same ball: the first at sqrt(2 h0 / g), then flights of 2 e^k v0 / g."""
    t, v, out = math.sqrt(2 * h0 / G), math.sqrt(2 * G * h0), []
    while t < T:
        out.append(t)
        v *= e
        t += 2 * v / G
    return out + [T]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("torchdiffeq_program_out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"methods_listed": len(SOLVERS)}

    # 1. Bounce times and their gradients with respect to the drop height.
    h0, e, T = torch.tensor(1.0, dtype=F64, requires_grad=True), 0.8, 2.0
    times = bounce_times(h0, e, T)
    exact = closed_form_times(1.0, e, T)
    metrics["bounces"] = len(times) - 1
    metrics["time_error"] = max(abs(float(a.detach()) - b) for a, b in zip(times, exact))
    metrics["stopped_at"] = float(times[-1])
    (dt1,) = torch.autograd.grad(times[0], h0)  # d/dh0 sqrt(2 h0 / g) = 1 / sqrt(2 g h0)
    metrics["first_bounce_gradient_error"] = abs(float(dt1) - 1 / math.sqrt(2 * G))
    print(f"{metrics['bounces']} bounces before T = {T} s, stopped at {metrics['stopped_at']:.6f} s")
    print(f"  bounce times within {metrics['time_error']:.1e} s of the closed form")

    # 2. A Hessian-vector product through odeint_adjoint against central differences of gradients.
    torch.manual_seed(0)
    W = (0.5 * torch.randn(2, 2, dtype=F64)).requires_grad_(True)
    v = torch.randn(2, 2, dtype=F64)
    y0, t = torch.tensor([0.5, -0.3], dtype=F64), torch.linspace(0, 1, 4, dtype=F64)

    def loss(W, solver):
        ys = solver(lambda s, y: torch.tanh(y @ W.T), y0, t, rtol=1e-10, atol=1e-12, adjoint_params=(W,))
        return (ys**2).sum() + ys[-1].sin().sum()

    (g,) = torch.autograd.grad(loss(W, torchdiffeq.odeint_adjoint), W, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), W)
    eps = 1e-5

    def grad_at(Wx):
        Wx = Wx.detach().requires_grad_(True)
        return torch.autograd.grad(loss(Wx, torchdiffeq.odeint_adjoint), Wx)[0]

    fd = (grad_at(W + eps * v) - grad_at(W - eps * v)) / (2 * eps)
    metrics["hvp_relative_error"] = float((hv - fd).norm() / fd.norm())
    print(f"Hessian-vector product through odeint_adjoint: relative error {metrics['hvp_relative_error']:.1e}")

    # 3. A forward-mode directional derivative of the solution with respect to y0.
    f = lambda s, y: torch.tanh(y @ W.detach().T)  # noqa: E731
    dy0 = torch.tensor([1.0, 0.0], dtype=F64)
    _, tangent = torch.func.jvp(lambda y: torchdiffeq.odeint(f, y, t, rtol=1e-10, atol=1e-12), (y0,), (dy0,))
    fd_fwd = (
        torchdiffeq.odeint(f, y0 + eps * dy0, t, rtol=1e-10, atol=1e-12)
        - torchdiffeq.odeint(f, y0 - eps * dy0, t, rtol=1e-10, atol=1e-12)
    ) / (2 * eps)
    metrics["jvp_relative_error"] = float((tangent - fd_fwd).norm() / fd_fwd.norm())
    print(f"torch.func.jvp through odeint: relative error {metrics['jvp_relative_error']:.1e}")

    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {args.out / 'metrics.json'}")


if __name__ == "__main__":
    main()
