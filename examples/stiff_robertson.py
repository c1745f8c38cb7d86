"""A stiff Neural ODE: learn Robertson's chemical kinetics with a small MLP, trained through rodas5p.

    python examples/stiff_robertson.py [--quick] [--iters N] [--adjoint | --gauss] [--out DIR]
    NEURALODE_QUICK=1 python examples/stiff_robertson.py          (the same as --quick; what CI runs)

Robertson's problem (three species, rate constants 0.04, 3e7 and 1e4) is the classic stiff chemical system:
the intermediate y2 never exceeds 3.7e-5 and reacts on time scales of 1e-4 while the others evolve until
t = 1e5. Kim, Ji, Deng, Ma & Rackauckas ("Stiff neural ordinary differential equations", Chaos 31, 093122,
2021) show that a Neural ODE learns such a system only with (i) a stiff solver in the loop, and (ii)
scaling by each species' characteristic magnitude ``s_i`` (here the largest value it takes in the data):
the network sees ``y / s`` and its output is multiplied by ``s``, and the loss weighs every species by
``1 / s_i``, so that y2 counts as much as y1 and y3. This script does exactly that:

    dy/dt = s * MLP(y / s)          loss = mean over times and species of ((y_hat - y) / s)^2

with training data at 40 times log-uniform on [1e-5, 1e5] (from scipy's Radau at rtol 1e-10), solved with
``method="rodas5p"`` (``--method radau5``, ``radau9``, ``radau13`` or ``kvaerno5`` for the other adaptive stiff methods) and
differentiated by backpropagation through its steps (``--adjoint``: by the interpolating adjoint, the same
method backwards with y(t) from the forward dense output). It writes the data and the
fitted curves on a log-time figure (``stiff_robertson.png``) and prints the fit error (the RMS of the scaled
error over all species and times) before and after training. A quick run (a few iterations, for CI) shows
the machinery working; a fit needs the full budget (``--iters 300`` or more).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

from neuralode import SolverError, odeint, odeint_adjoint
from neuralode.plotting import save_figure

F64 = torch.float64
K = (0.04, 3e7, 1e4)


def robertson_np(t, y):
    return [-K[0] * y[0] + K[2] * y[1] * y[2], K[0] * y[0] - K[2] * y[1] * y[2] - K[1] * y[1] ** 2, K[1] * y[1] ** 2]


def data(n_times: int = 40):
    """Times log-uniform on [1e-5, 1e5] and the true states there (from y(0) = (1, 0, 0)); the Neural ODE
    starts from the first of them."""
    times = np.geomspace(1e-5, 1e5, n_times)
    sol = solve_ivp(robertson_np, (0.0, 1e5), [1.0, 0.0, 0.0], method="Radau", t_eval=times, rtol=1e-10, atol=1e-14)
    return torch.tensor(times, dtype=F64), torch.tensor(sol.y.T, dtype=F64)


class ScaledMLP(torch.nn.Module):
    """``dy/dt = s * MLP(y / s, log10(t) / 5) / t``: the species scaling of Kim et al. (2021), in log time.

    The ``1 / t`` makes the network's output a rate per unit of ``log t`` (``dy/d log t = t dy/dt``): the
    data span ten decades of time, and O(1) network outputs integrated over 1e5 time units would blow up
    long before training could shape them, while over the 23 units of ``log t`` they stay bounded. The
    problem stays stiff: ``t |J|`` reaches 1e9.
    """

    def __init__(self, scale: torch.Tensor, width: int = 16):
        super().__init__()
        self.register_buffer("scale", scale)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, width),
            torch.nn.GELU(),
            torch.nn.Linear(width, width),
            torch.nn.GELU(),
            torch.nn.Linear(width, 3),
        ).to(F64)
        # Start from dy/dt = 0: a random MLP's O(1) rates, integrated over 1e5 time units, blow up; training
        # grows the rates from zero instead.
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, t, y):
        features = torch.cat([y / self.scale, (torch.log10(t) / 5).reshape(1)])
        return self.scale * self.net(features) / t


def fit_error(model, t, y_true, scale, method: str = "rodas5p") -> float:
    """RMS over species and times of (y_hat - y) / s."""
    with torch.no_grad():
        y_hat = predict(model, t, y_true[0], scale, method=method)
    return float((((y_hat - y_true) / scale) ** 2).mean().sqrt())


def predict(model, t, y0, scale, adjoint: bool = False, method: str = "rodas5p", gauss: bool = False):
    """The Neural ODE's states at ``t``; ``adjoint=True`` differentiates it by the interpolating adjoint
    (``method`` backwards too, ``y(t)`` from the forward dense output) instead of backpropagation, and
    ``gauss=True`` by the Gauss adjoint: ``a(t)`` alone backwards (a 3 × 3 Jacobian instead of one over
    the 3 states and every parameter), ``dL/dθ`` by Gauss-Legendre quadrature over its steps."""
    kw = dict(rtol=1e-5, atol=1e-7 * scale, method=method, options={"max_num_steps": 5000})
    if adjoint or gauss:
        return odeint_adjoint(
            model, y0, t, adjoint_method=method, adjoint_options={"quadrature": True} if gauss else None, **kw
        )
    return odeint(model, y0, t, **kw)


def plot(t, y_true, y_fit, scale, err: float, path: Path, method: str = "rodas5p") -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    tt, yt, yf = t.numpy(), y_true.numpy(), y_fit.numpy()
    labels = ["$y_1$", "$y_2 \\times 10^4$", "$y_3$"]
    factors = [1.0, 1e4, 1.0]
    for i, (label, c) in enumerate(zip(labels, ["C0", "C1", "C2"])):
        ax.plot(tt, yt[:, i] * factors[i], "o", color=c, ms=4, label=f"{label} data")
        ax.plot(tt, yf[:, i] * factors[i], "-", color=c, lw=1.5, label=f"{label} Neural ODE")
    ax.set_xscale("log")
    ax.set_xlabel("time t (s, log scale)")
    ax.set_ylabel("concentration (mol/L; $y_2$ scaled by $10^4$)")
    ax.set_title(f"Stiff Neural ODE on Robertson kinetics ({method}): RMS scaled error {err:.3g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(ncol=3, fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations only (CI); also NEURALODE_QUICK=1")
    parser.add_argument("--iters", type=int, default=None, help="training iterations (default 300; quick: 5)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument(
        "--adjoint",
        action="store_true",
        help="gradients by the interpolating adjoint (the method backwards) instead of backpropagation",
    )
    parser.add_argument(
        "--gauss",
        action="store_true",
        help="gradients by the Gauss adjoint (adjoint_options={'quadrature': True}) instead of backpropagation",
    )
    parser.add_argument(
        "--method",
        choices=("rodas5p", "radau5", "radau9", "radau13", "kvaerno5"),
        default="rodas5p",
        help="the adaptive stiff method (default rodas5p)",
    )
    parser.add_argument("--out", type=Path, default=Path("stiff_robertson_out"))
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("NEURALODE_QUICK", "") not in ("", "0")
    iters = args.iters if args.iters is not None else (5 if quick else 300)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    t, y_true = data()
    scale = y_true.abs().max(dim=0).values  # (3,): the species' characteristic magnitudes
    model = ScaledMLP(scale)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    err0 = fit_error(model, t, y_true, scale, args.method)
    print(f"species scales s = {[f'{v:.3g}' for v in scale.tolist()]}; fit error before training {err0:.4g}")
    start = time.perf_counter()
    for it in range(1, iters + 1):
        opt.zero_grad()
        try:
            y_hat = predict(model, t, y_true[0], scale, adjoint=args.adjoint, method=args.method, gauss=args.gauss)
        except SolverError as e:  # the learned dynamics became too stiff or blew up: shrink the step
            for group in opt.param_groups:
                group["lr"] *= 0.5
            print(f"iter {it}: solve failed ({e.reason}); learning rate halved")
            continue
        loss = (((y_hat - y_true) / scale) ** 2).mean()
        loss.backward()
        opt.step()
        if it == 1 or it % 10 == 0 or it == iters:
            print(
                f"iter {it}/{iters}: loss {loss.detach().item():.4g} ({time.perf_counter() - start:.1f} s)", flush=True
            )
    err = fit_error(model, t, y_true, scale, args.method)
    with torch.no_grad():
        y_fit = predict(model, t, y_true[0], scale, method=args.method)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(t, y_true, y_fit, scale, err, args.out / "stiff_robertson.png", args.method)
    print(
        f"fit error (RMS of (y_hat - y) / s over species and times): {err0:.4g} before, {err:.4g} after "
        f"{iters} iterations; figure: {args.out / 'stiff_robertson.png'}"
    )
    return 0 if math.isfinite(err) else 1


if __name__ == "__main__":
    raise SystemExit(main())
