"""The Gauss adjoint against the interpolating and backsolve adjoints: time and backward evaluations.

Writes its section of ``benchmarks/results/adjoint.md`` (between the ``gauss-adjoint`` markers; the rest of
the page is ``bench_adjoint.py``'s).

    python benchmarks/bench_gauss_adjoint.py [--quick]

Workloads, each a forward solve plus the adjoint backward, one torch thread, float64 where accuracy is
compared (the stiff ones) and float32 for the MLP:

1. MLP Neural ODE 32→128→128→32 (tanh, 25k parameters), batch 64, dopri5 at 1e-6, 10 output times.
2. A stiff neural ODE ``y' = -diag(1, 10, 100, 1000) y + W2 tanh(W1 y + b1)`` (4 states, 64 hidden, 576
   parameters), batch of 1, rodas5p at 1e-6, 5 output times; the interpolating adjoint's backward Jacobian is
   580 × 580 there, the Gauss adjoint's 4 × 4. The backsolve adjoint is left out: re-solving y backwards
   through the rate-1000 mode took 4205 backward steps and 35× the Gauss adjoint's time, with a gradient 130 %
   off, in a trial run with 16 hidden units.
3. Robertson's kinetics with its 3 rate constants learnable, rodas5p at rtol 1e-6, atol 1e-10.

The three modes are run alternately (the order rotated every repetition) so that the machine's load, shared
with other jobs, reaches all of them alike; each repetition gives the ratios Gauss / interpolating and
Gauss / backsolve, and the table reports their median with the range over repetitions.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks.common import machine_markdown, markdown_table, parse_args, setup
from neuralode.solvers.adjoint.backsolve import solve_adjoint

MODES = {
    "backsolve": {"interpolate": False},
    "interpolating": {"interpolate": True},
    "gauss": {"quadrature": True},
}
BEGIN, END = "<!-- gauss-adjoint: begin -->", "<!-- gauss-adjoint: end -->"


class MLP(nn.Module):
    def __init__(self, dims, dtype):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b, dtype=dtype))
            if i < len(dims) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, t, y):
        return self.net(y)


class StiffNeural(nn.Module):
    """``y' = -diag(λ) y + W2 tanh(W1 y + b1)``: a fixed stiff linear part and a learnable small MLP."""

    def __init__(self, rates=(1.0, 10.0, 100.0, 1000.0), hidden=64):
        super().__init__()
        m = len(rates)
        self.rates = torch.tensor(rates, dtype=torch.float64)
        self.l1 = nn.Linear(m, hidden, dtype=torch.float64)
        self.l2 = nn.Linear(hidden, m, dtype=torch.float64, bias=False)

    def forward(self, t, y):
        return -self.rates * y + self.l2(torch.tanh(self.l1(y)))


class Robertson(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor([0.04, 3e7, 1e4], dtype=torch.float64))

    def forward(self, t, y):
        k1, k2, k3 = self.k
        y1, y2, y3 = y.unbind(-1)
        return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2**2, k2 * y2**2], -1)


def run(model, y0, t, loss, mode, **kw):
    """(seconds of forward + backward, backward NFE, backward accepted steps, gradient vector)."""
    params = tuple(model.parameters())
    start = time.perf_counter()
    sol = solve_adjoint(model, y0, t, adjoint_options=MODES[mode], **kw)
    grads = torch.autograd.grad(loss(sol.ys), (y0, *params))
    elapsed = time.perf_counter() - start
    st = sol.adjoint_stats
    return elapsed, st.nfe, st.n_accepted, torch.cat([g.reshape(-1) for g in grads])


def measure(name: str, make: Callable[[], tuple], reps: int, modes=tuple(MODES)) -> list[str]:
    model, y0, t, loss, kw = make()
    results: dict[str, list] = {m: [] for m in modes}
    for m in modes:  # warm-up, and the failures
        try:
            run(model, y0, t, loss, m, **kw)
        except Exception as exc:  # a mode that cannot solve this problem is reported, not timed
            results[m] = [f"fails: {type(exc).__name__}: {str(exc)[:80]}"]
    live = [m for m in modes if not (results[m] and isinstance(results[m][0], str))]
    for r in range(reps):
        order = live[r % len(live) :] + live[: r % len(live)]
        for m in order:
            results[m].append(run(model, y0, t, loss, m, **kw))
    ref = results["gauss"][0][3]
    rows = []
    for m in modes:
        if results[m] and isinstance(results[m][0], str):
            rows.append([m, results[m][0], "", "", "", ""])
            continue
        times = [x[0] for x in results[m]]
        if m == "gauss":
            ratio = "1"
        else:
            ratios = [g[0] / x[0] for g, x in zip(results["gauss"], results[m])]
            ratio = f"{statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}]"
        grad = results[m][0][3]
        diff = float((grad - ref).norm() / ref.norm())
        rows.append(
            [m, ratio, f"{statistics.median(times) * 1e3:.0f} ms", results[m][0][1], results[m][0][2], f"{diff:.1e}"]
        )
    print(name, {m: [round(x[0], 3) for x in results[m] if not isinstance(x, str)] for m in modes}, flush=True)
    P = sum(p.numel() for p in model.parameters())
    header = [
        "mode",
        "Gauss time ÷ this mode's [range]",
        "median time",
        "backward NFE",
        "backward steps",
        "grad vs Gauss",
    ]
    return [f"### {name} (P = {P}, {reps} repetitions)", markdown_table(header, rows)]


def mlp():
    torch.manual_seed(0)
    model = MLP((32, 128, 128, 32), torch.float32)
    y0 = torch.randn(64, 32, requires_grad=True)
    t = torch.linspace(0, 1, 10)
    return model, y0, t, lambda ys: (ys**2).mean(), dict(rtol=1e-6, atol=1e-6, method="dopri5")


def stiff_neural():
    torch.manual_seed(0)
    model = StiffNeural()
    y0 = torch.tensor([[1.0, 0.5, -0.5, 1.0]], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    return model, y0, t, lambda ys: (ys**2).sum(), dict(rtol=1e-6, atol=1e-8, method="rodas5p")


def robertson():
    model = Robertson()
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1e-2, 1.0, 1e2], dtype=torch.float64)
    w = torch.tensor([1.0, 1e4, 1.0], dtype=torch.float64)
    return model, y0, t, lambda ys: (ys[1:] * w).sum(), dict(rtol=1e-6, atol=1e-10, method="rodas5p")


def main(argv=None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    setup()
    reps = 3 if args.quick else 4
    start = time.perf_counter()
    parts = [
        *measure(
            "Stiff neural ODE, 4 states, 64 hidden, rates 1 to 1000, float64, rodas5p 1e-6, 5 output times",
            stiff_neural,
            reps,
            modes=("interpolating", "gauss"),
        ),
        *measure("Robertson, 3 learnable rates, float64, rodas5p rtol 1e-6 atol 1e-10", robertson, reps),
        *measure("MLP 32→128→128→32, batch 64, float32, dopri5 1e-6, 10 output times", mlp, reps),
    ]
    intro = (
        "## Gauss adjoint against the interpolating and backsolve adjoints\n\n"
        f"Generated by `python benchmarks/bench_gauss_adjoint.py` in {time.perf_counter() - start:.0f} s. "
        "Forward solve + adjoint backward of each mode, run alternately (order rotated each repetition), one "
        "torch thread; the ratio is the Gauss adjoint's time over the mode's in the same repetition (below 1: "
        "Gauss is faster), median and range over repetitions. Backward NFE: `Solution.adjoint_stats.nfe` (for "
        "Gauss it includes the quadrature's evaluations of f, one per node; a backward evaluation of Gauss "
        "differentiates with respect to y only, the other modes' with respect to y and θ). Grad vs Gauss: "
        "relative 2-norm difference of the gradients with respect to y0 and θ. The machine is shared: ratios, "
        "not absolute times."
    )
    section = "\n\n".join([BEGIN, intro, machine_markdown(), *parts, END])
    path = args.out / "adjoint.md"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
    print(section)
    return path


if __name__ == "__main__":
    main()
