"""Inference solves with the whole run of steps compiled: ``options={"compile": True}`` without autograd.

A batch of Van der Pol oscillators (mu = 2, float32, dopri5 at rtol = atol = 1e-5, 200 output times on
[0, 10]; workload (e) of ``benchmarks/bench_peers.py``) solved six ways under ``torch.no_grad()``: eagerly and
compiled, with one clock for the batch, with a clock per sample (``per_sample``), and with ``rk4`` on a fixed grid
of ``--grid-steps`` steps. Compiled, an adaptive ``dopri5``/``tsit5``/``bosh3`` solve runs its attempts inside one
``torch.compile``-d ``while_loop`` whose clock (time, step size, the controller's memory, the output index) lives
on the device (:mod:`neuralode.solvers.fast.device_run`), and a fixed grid's steps run as one compiled
``while_loop`` whose body is one step (:mod:`neuralode.solvers.fast.grid_run`). The script prints, for each way, the first call (which compiles),
the median of the later calls, the accepted and rejected steps and the largest difference from the eager solve,
and writes ``metrics.json`` and ``compiled_solve_times.png`` to ``--out``. ``--step-t`` gives times every step
must land on (a forcing that switches there, say) and ``--min-step`` a floor for the step size: the compiled
runs keep both, with the eager clocks' steps.

    python examples/compiled_solve.py [--batch 256] [--repeats 10] [--backend inductor] [--out compiled_out]
                                      [--step-t 2.5 5.0] [--min-step 1e-4] [--grid-steps 1000]

``--backend eager`` traces the run without generating code (quick, for a smoke run; not faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import neuralode


def van_der_pol(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, 2.0 * (1 - x**2) * v - x], -1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="oscillators in the batch (default 256)")
    parser.add_argument("--repeats", type=int, default=10, help="timed solves after the first (default 10)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--out", type=Path, default=Path("compiled_out"), help="output folder")
    parser.add_argument("--step-t", type=float, nargs="*", default=[], help="times every step lands on")
    parser.add_argument("--min-step", type=float, default=0.0, help="the smallest step size (default 0)")
    parser.add_argument("--grid-steps", type=int, default=1000, help="rk4 steps on the fixed grid (default 1000)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.grid_steps < 1:
        parser.error("--batch, --repeats and --grid-steps must be positive")
    if args.min_step < 0:
        parser.error("--min-step must be 0 or positive")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(2)
    y0 = torch.rand(args.batch, 2) * 4 - 2
    t = torch.linspace(0.0, 10.0, 200)
    stops = {"step_t": args.step_t, "min_step": args.min_step}
    adaptive = {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5}
    grid = {"method": "rk4"}
    step = {"step_size": 10.0 / args.grid_steps}
    ways = {
        "eager": (adaptive, stops),
        "compiled": (adaptive, {**stops, "compile": args.backend}),
        "eager, per sample": (adaptive, {**stops, "per_sample": True}),
        "compiled, per sample": (adaptive, {**stops, "per_sample": True, "compile": args.backend}),
        "eager, rk4 grid": (grid, step),
        "compiled, rk4 grid": (grid, {**step, "compile": args.backend}),
    }
    results: dict[str, dict] = {}
    solutions = {}
    for name, (kw, options) in ways.items():
        with torch.no_grad():
            start = time.perf_counter()
            sol = neuralode.solve(van_der_pol, y0, t, **kw, options=options)
            first = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                neuralode.solve(van_der_pol, y0, t, **kw, options=options)
                times.append(time.perf_counter() - start)
        solutions[name] = sol
        accepted, rejected = (int(torch.as_tensor(x).sum()) for x in (sol.stats.n_accepted, sol.stats.n_rejected))
        results[name] = {
            "first_call_s": first,
            "median_ms": 1e3 * statistics.median(times),
            "accepted": accepted,
            "rejected": rejected,
            "compile_s": sol.stats.compile_s,
        }
    for name, r in results.items():
        eager = solutions["eager" + name[name.index(",") :] if "," in name else "eager"]
        r["max_abs_diff_from_eager"] = float((solutions[name].ys - eager.ys).abs().max())
    print(
        f"{args.batch} Van der Pol oscillators, dopri5 1e-5 (rk4: {args.grid_steps} steps), 200 outputs, float32, "
        f"backend {args.backend}:"
    )
    print(f"{'':22s} {'first call':>11s} {'median':>10s} {'accepted':>9s} {'rejected':>9s} {'max |Δy|':>9s}")
    for name, r in results.items():
        print(
            f"{name:22s} {r['first_call_s']:10.2f}s {r['median_ms']:8.2f}ms {r['accepted']:9d} {r['rejected']:9d} "
            f"{r['max_abs_diff_from_eager']:9.1e}"
        )
    for clock in ("", ", per sample", ", rk4 grid"):
        speed = results["eager" + clock]["median_ms"] / results["compiled" + clock]["median_ms"]
        print(f"compiled{clock}: {speed:.1f}x the eager speed")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = list(results)
    ax.barh(names, [results[n]["median_ms"] for n in names], color=["0.6", "C0"] * 3)
    ax.set_xlabel("median time of a solve (ms)")
    ax.invert_yaxis()
    speed = results["eager"]["median_ms"] / results["compiled"]["median_ms"]
    ax.set_title(
        f"{args.batch} Van der Pol, dopri5 1e-5 ({args.backend}): compiled at {speed:.1f}x the eager speed", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(args.out / "compiled_solve_times.png", dpi=120)
    plt.close(fig)
    metrics = {
        "batch": args.batch,
        "backend": args.backend,
        "step_t": args.step_t,
        "min_step": args.min_step,
        "grid_steps": args.grid_steps,
        "ways": results,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
