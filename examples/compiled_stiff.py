"""Small stiff systems solved with rodas5p's whole run of steps compiled: ``options={"compile": True}``.

Robertson's chemical kinetics (Hairer & Wanner II, IV.10: three species, rates 0.04, 1e4 and 3e7, stiff for
t up to 1e5), solved under ``torch.no_grad()`` three ways and timed alternately in one process:

* rodas5p, eagerly (the host clock: a step is a few hundred small torch calls);
* rodas5p compiled: the attempts run inside one ``torch.compile``-d ``while_loop`` whose clock lives on the device,
  each attempt forming the Jacobian by ``torch.func.jacrev`` and factoring ``I / (h gamma) - J`` with LAPACK inside
  the graph (:mod:`neuralode.solvers.fast.device_run`);
* scipy's Radau (``solve_ivp``), for reference;

and then a batch of ``--batch`` Robertson systems whose initial amount of the first species ranges from 0.75 to
1.25, one batched rodas5p solve with per-system Jacobian blocks, eager and compiled. The script checks that each compiled solve takes the eager
one's accepted and rejected steps, prints the times (the first compiled call compiles), and writes
``metrics.json`` and ``compiled_stiff.png`` (the species against time on log axes, the batch's spread shaded) to
``--out``.

    python examples/compiled_stiff.py [--rtol 1e-6] [--batch 64] [--repeats 5] [--backend inductor] [--out DIR]

``--backend eager`` traces the run without generating code (quick, for a smoke run; not faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

import neuralode

RATES = (0.04, 1e4, 3e7)


def robertson(t, y):
    """Robertson's kinetics on the last dimension (a (3,) state or a (B, 3) batch)."""
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    k1, k2, k3 = RATES
    return torch.stack([-k1 * y1 + k2 * y2 * y3, k1 * y1 - k2 * y2 * y3 - k3 * y2 * y2, k3 * y2 * y2], -1)


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance (atol = 1e-6 rtol)")
    parser.add_argument("--batch", type=int, default=64, help="systems in the batched solve (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed solves per way (default 5)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--out", type=Path, default=Path("compiled_stiff_out"), help="output folder")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or not 0 < args.rtol < 1:
        parser.error("--batch and --repeats must be positive and --rtol in (0, 1)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    f64 = torch.float64
    t = torch.cat([torch.zeros(1, dtype=f64), torch.logspace(-5, 5, 40, dtype=f64)])
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=f64)
    kw = dict(method="rodas5p", rtol=args.rtol, atol=1e-6 * args.rtol)

    def solve(y, compiled: bool):
        with torch.no_grad():
            return neuralode.solve(robertson, y, t, **kw, options={"compile": args.backend} if compiled else {})

    results: dict[str, dict] = {}
    solutions = {}
    for name, y, compiled in (
        ("eager", y0, False),
        ("compiled", y0, True),
        ("eager, batch", None, False),
        ("compiled, batch", None, True),
    ):
        if y is None:  # the batch: initial amounts of the first species from 0.75 to 1.25
            y = torch.zeros(args.batch, 3, dtype=f64)
            y[:, 0] = torch.linspace(0.75, 1.25, args.batch, dtype=f64)
        start = time.perf_counter()
        sol = solve(y, compiled)
        first = time.perf_counter() - start
        solutions[name] = sol
        st = sol.stats
        results[name] = {
            "first_call_s": first,
            "median_s": timed(lambda y=y, compiled=compiled: solve(y, compiled), args.repeats),
            "accepted": st.n_accepted,
            "rejected": st.n_rejected,
            "nfe": st.nfe,
            "jacobians": st.n_jac_evals,
        }
    for name in ("compiled", "compiled, batch"):
        eager = solutions[name.replace("compiled", "eager")]
        diff = (solutions[name].ys - eager.ys).abs() / (eager.ys.abs() + 1e-6 * args.rtol)
        results[name]["max_rel_diff_from_eager"] = float(diff.max())
        results[name]["same_steps"] = (results[name]["accepted"], results[name]["rejected"]) == (
            results[name.replace("compiled", "eager")]["accepted"],
            results[name.replace("compiled", "eager")]["rejected"],
        )

    def robertson_np(s, y):
        k1, k2, k3 = RATES
        return np.array([-k1 * y[0] + k2 * y[1] * y[2], k1 * y[0] - k2 * y[1] * y[2] - k3 * y[1] ** 2, k3 * y[1] ** 2])

    def radau():
        span, y_start = (0.0, float(t[-1])), y0.numpy()
        return solve_ivp(robertson_np, span, y_start, method="Radau", rtol=args.rtol, atol=1e-6 * args.rtol)

    r = radau()
    results["scipy Radau"] = {
        "first_call_s": float("nan"),
        "median_s": timed(radau, args.repeats),
        "accepted": len(r.t) - 1,
        "rejected": None,
        "nfe": r.nfev,
        "jacobians": r.njev,
    }

    print(f"Robertson, rodas5p at rtol {args.rtol:g}, backend {args.backend}; batch of {args.batch}:")
    print(f"{'':18s} {'steps (rej)':>12s} {'median':>10s} {'first call':>11s} {'same steps':>11s}")
    for name, r_ in results.items():
        steps = f"{r_['accepted']} ({'–' if r_['rejected'] is None else r_['rejected']})"
        first = "–" if np.isnan(r_["first_call_s"]) else f"{r_['first_call_s']:.2f}s"
        same = str(r_.get("same_steps", "–"))
        print(f"{name:18s} {steps:>12s} {1e3 * r_['median_s']:8.2f}ms {first:>11s} {same:>11s}")
    ratio = results["compiled"]["median_s"] / results["scipy Radau"]["median_s"]
    speed = results["compiled"]["median_s"] / results["eager"]["median_s"]
    print(f"compiled rodas5p: {ratio:.2f}x scipy Radau's time, {speed:.2f}x the eager solve's")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    ts = t[1:].numpy()
    batch = solutions["compiled, batch"].ys[1:].numpy()  # (T, B, 3)
    for i, (ax, label) in enumerate(zip(axes, ("y1", "y2", "y3"))):
        ax.plot(ts, solutions["compiled"].ys[1:, i].numpy(), "k-", label="compiled")
        ax.plot(ts, solutions["eager"].ys[1:, i].numpy(), "r--", label="eager")
        ax.fill_between(ts, batch[:, :, i].min(1), batch[:, :, i].max(1), alpha=0.25, label=f"batch of {args.batch}")
        ax.set_xscale("log")
        ax.set_xlabel("t (s)")
        ax.set_ylabel(f"{label} (concentration)")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Robertson, rodas5p compiled: {1e3 * results['compiled']['median_s']:.1f} ms per solve, "
        f"{ratio:.2f}x scipy Radau's time",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(args.out / "compiled_stiff.png", dpi=120)
    plt.close(fig)
    metrics = {"rtol": args.rtol, "batch": args.batch, "backend": args.backend, "ways": results}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
