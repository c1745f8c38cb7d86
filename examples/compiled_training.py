"""Training a Neural ODE with its solve compiled: ``options={"compile": True}`` under autograd.

A Neural ODE ``y' = f_θ(y)`` (an MLP 2 → 32 → 2, float32) learns the damped rotation ``y' = A y`` from its
trajectories, trained three ways, each eagerly and compiled, from the same initial weights:

* **backpropagation on an rk4 grid** (``--steps`` steps): compiled, the grid's steps run as one compiled
  ``while_loop`` and the backward pass as a second one, which pulls the cotangent back through each step with
  ``torch.func.vjp`` (:mod:`neuralode.solvers.fast.grid_run`);
* **backpropagation through an adaptive dopri5 solve**: compiled, the attempts run as one compiled ``while_loop``
  with the clock on the device, recording each accepted step, and the backward pass is a compiled reverse run
  over those steps, the outputs' cotangents carried back through the interpolant that formed them
  (:mod:`neuralode.solvers.fast.device_run`, :mod:`neuralode.solvers.fast.backprop`);
* **the adjoint** (``odeint_adjoint``, dopri5): compiled, the forward solve and every backward solve run their
  steps as one compiled ``while_loop``, the backward dynamics written with ``torch.func.vjp``
  (:mod:`neuralode.solvers.adjoint.traced`).

The field is a :class:`neuralode.models.ODEFunc`, which counts its evaluations; compiled, its counting is
suspended inside the compiled runs and the solver adds its counts (:mod:`neuralode.solvers.counting`), so the
script also checks, for the first training step of each way, that the field counted as many evaluations as the
solve and its backward pass report.

The script first compares each compiled gradient with the eager one on the untrained model (their largest
relative difference), then trains each way with Adam for ``--iterations`` steps, and prints, per way, the loss
before and after, the first step's time (which compiles) and the median of the later ones. It writes
``metrics.json`` and ``compiled_training.png`` (the loss curves) to ``--out``.

    python examples/compiled_training.py [--steps 100] [--iterations 60] [--backend inductor] [--out compiled_training_out]

``--backend eager`` traces the compiled runs without generating code (quick, for a smoke run; not faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import neuralode
from neuralode.models import ODEFunc

A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])


class Field(ODEFunc):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))

    def forward(self, t, y):
        return self.net(y)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="rk4 steps over the span (default 100)")
    parser.add_argument("--iterations", type=int, default=60, help="Adam iterations per way (default 60)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--out", type=Path, default=Path("compiled_training_out"))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.iterations < 2:
        parser.error("--steps must be positive and --iterations at least 2")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    t = torch.linspace(0.0, 4.0, 21)
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # three trajectories
    with torch.no_grad():  # the data: the true system, finely solved
        target = neuralode.odeint(lambda t, y: y @ A.T, y0, t, method="dopri5", rtol=1e-8, atol=1e-8)
    initial = Field().state_dict()
    grid = {"method": "rk4", "options": {"step_size": float(t[-1] - t[0]) / args.steps}}
    adaptive = {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5, "options": {}}
    ways = {
        "backprop, rk4 grid": ("backprop", grid, False),
        "backprop, rk4 grid, compiled": ("backprop", grid, True),
        "backprop, dopri5": ("backprop", adaptive, False),
        "backprop, dopri5, compiled": ("backprop", adaptive, True),
        "adjoint, dopri5": ("backsolve", adaptive, False),
        "adjoint, dopri5, compiled": ("backsolve", adaptive, True),
    }

    def solve(field, mode, kw, compiled):
        options = {**kw["options"], **({"compile": args.backend} if compiled else {})}
        return neuralode.solve(
            field, y0, t, **{k: v for k, v in kw.items() if k != "options"}, options=options, adjoint=mode
        )

    def loss_of(sol):
        return (sol.ys - target).pow(2).mean()

    def gradient(field, mode, kw, compiled):
        field.zero_grad()
        sol = solve(field, mode, kw, compiled)
        loss_of(sol).backward()
        return torch.cat([p.grad.reshape(-1) for p in field.parameters()]), sol

    results: dict[str, dict] = {}
    for name, (mode, kw, compiled) in ways.items():
        field = Field()
        field.load_state_dict(initial)
        entry: dict = {}
        if compiled:  # the compiled gradient against the eager one, on the untrained model
            start = time.perf_counter()
            g, sol = gradient(field, mode, kw, True)
            entry["first_step_s"] = time.perf_counter() - start
            # The graphs compiled by the forward solve (and, for the grid run, its backward pass), and by the
            # adjoint's backward solves: none where a solve fell back to eager.
            entry["compiles"] = sol.stats.n_compiles + (sol.adjoint_stats.n_compiles if sol.adjoint_stats else 0)
            reference, _ = gradient(field, mode, kw, False)
            entry["gradient_relative_difference"] = float((g - reference).abs().max() / reference.abs().max())
        optimizer = torch.optim.Adam(field.parameters(), lr=1e-2)
        losses, times = [], []
        for i in range(args.iterations):
            field.reset_nfe()
            start = time.perf_counter()
            optimizer.zero_grad()
            sol = solve(field, mode, kw, compiled)
            loss = loss_of(sol)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
            losses.append(float(loss))
            if i == 0:  # evaluations: as the field counted them, and as the solve and its backward pass report
                entry["field_nfe"] = field.nfe_forward + field.nfe_backward
                entry["solver_nfe"] = sol.stats.nfe + (sol.adjoint_stats.nfe if sol.adjoint_stats else 0)
        entry.update(losses=losses, median_step_ms=1e3 * statistics.median(times[1:]))
        results[name] = entry

    print(f"{args.iterations} Adam steps per way, backend {args.backend}:")
    print(
        f"{'':32s} {'loss before':>11s} {'loss after':>11s} {'median step':>12s} {'first step':>11s} {'rel Δgrad':>10s}"
    )
    for name, r in results.items():
        first = f"{r['first_step_s']:10.2f}s" if "first_step_s" in r else f"{'–':>11s}"
        dg = f"{r['gradient_relative_difference']:10.1e}" if "gradient_relative_difference" in r else f"{'–':>10s}"
        print(f"{name:32s} {r['losses'][0]:11.4f} {r['losses'][-1]:11.4f} {r['median_step_ms']:10.2f}ms {first} {dg}")
    for way in ("backprop, rk4 grid", "backprop, dopri5", "adjoint, dopri5"):
        speed = results[way]["median_step_ms"] / results[way + ", compiled"]["median_step_ms"]
        print(f"{way}, compiled: {speed:.1f}x the eager speed per training step")
    for name, r in results.items():
        print(f"{name}: the field counted {r['field_nfe']} evaluations, the solver {r['solver_nfe']}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, r in results.items():
        ax.plot(range(1, args.iterations + 1), r["losses"], "--" if "compiled" in name else "-", label=name)
    ax.set_xlabel("Adam iteration")
    ax.set_ylabel("mean squared error")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"Training eagerly and compiled ({args.backend}): the same losses", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out / "compiled_training.png", dpi=120)
    plt.close(fig)
    metrics = {"steps": args.steps, "iterations": args.iterations, "backend": args.backend, "ways": results}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
