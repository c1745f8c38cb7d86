"""Stiff problems: neuralode's rodas5p, kvaerno5, auto and rosenbrock23 against scipy's Radau, BDF and LSODA.

    python benchmarks/bench_stiff.py [--quick] [--out DIR]      (writes DIR/stiff.md)

For each problem (Robertson to t = 1e5, Van der Pol mu = 1000, HIRES, OREGO; Hairer & Wanner II, IV.10)
and tolerance (rtol 1e-4 ... 1e-8, atol = rtol * the problem's absolute scale): the error at the output
times against a reference (scipy Radau at rtol 1e-13), scaled as max |y - ref| / (|ref| + scale); accepted
steps; function and Jacobian evaluations; and the time as a ratio to scipy Radau's in the same process
(both float64 on one thread; scipy forms its Jacobians by finite differences, as it does by default, and
neuralode by autograd). Then the batch case: 256 Robertson systems with different rate constants in one
batched solve against one system alone and against 256 scipy solves.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from scipy.integrate import solve_ivp

from benchmarks.common import machine_markdown, parse_args, setup
from neuralode import solve

F64 = torch.float64


# Each right-hand side is written once for numpy and torch: ``stack`` joins the components.
def robertson(y, stack):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2])


def vdp1000(y, stack):
    return stack([y[..., 1], 1000.0 * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]])


def hires(y, stack):
    y1, y2, y3, y4, y5, y6, y7, y8 = (y[..., i] for i in range(8))
    return stack([
        -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
        1.71 * y1 - 8.75 * y2,
        -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
        8.32 * y2 + 1.71 * y3 - 1.12 * y4,
        -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
        -280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
        280.0 * y6 * y8 - 1.81 * y7,
        -280.0 * y6 * y8 + 1.81 * y7,
    ])


def orego(y, stack):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return stack([
        77.27 * (y2 + y1 * (1 - 8.375e-6 * y1 - y2)),
        (y3 - (1 + y1) * y2) / 77.27,
        0.161 * (y1 - y3),
    ])


PROBLEMS = {
    # name: (f, y0, t_end, absolute scale, output times)
    "Robertson": (robertson, [1.0, 0.0, 0.0], 1e5, 1e-6, np.concatenate([[0.0], np.geomspace(1e-4, 1e5, 10)])),
    "Van der Pol mu=1000": (vdp1000, [2.0, 0.0], 2000.0, 1e-3, np.linspace(0, 2000.0, 11)),
    "HIRES": (hires, [1, 0, 0, 0, 0, 0, 0, 0.0057], 321.8122, 1e-4, np.linspace(0, 321.8122, 11)),
    "OREGO": (orego, [1.0, 2.0, 3.0], 360.0, 1e-2, np.linspace(0, 360.0, 11)),
}


def _np_rhs(f):
    return lambda t, y: f(y, np.array)


def _torch_rhs(f):
    return lambda t, y: f(y, lambda xs: torch.stack(xs, dim=-1))


def reference(name):
    f, y0, t_end, scale, times = PROBLEMS[name]
    r = solve_ivp(_np_rhs(f), (0.0, t_end), y0, method="Radau", t_eval=times, rtol=1e-13, atol=1e-13 * scale)
    return r.y.T


def run_scipy(name, method, rtol):
    f, y0, t_end, scale, times = PROBLEMS[name]
    t0 = time.perf_counter()
    r = solve_ivp(_np_rhs(f), (0.0, t_end), y0, method=method, rtol=rtol, atol=rtol * scale, dense_output=True)
    seconds = time.perf_counter() - t0
    return r.sol(times).T, len(r.t) - 1, r.nfev, r.njev, seconds


def run_ours(name, method, rtol):
    f, y0, t_end, scale, times = PROBLEMS[name]
    t0 = time.perf_counter()
    with torch.no_grad():
        sol = solve(_torch_rhs(f), torch.tensor(y0, dtype=F64), torch.tensor(times, dtype=F64),
                    rtol=rtol, atol=rtol * scale, method=method)
    seconds = time.perf_counter() - t0
    st = sol.stats
    return sol.ys.numpy(), st.n_accepted, st.nfe, st.n_jac_evals, seconds


def error(ys, ref, scale) -> float:
    return float(np.max(np.abs(ys - ref) / (np.abs(ref) + scale)))


def batch_case(n_batch: int, n_scipy: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    k = torch.tensor([0.04, 3e7, 1e4], dtype=F64) * torch.exp(torch.empty(n_batch, 3, dtype=F64).uniform_(-0.5, 0.5, generator=g))

    def f(t, y):  # (B, 3)
        y1, y2, y3 = y[:, 0], y[:, 1], y[:, 2]
        return torch.stack([-k[:, 0] * y1 + k[:, 2] * y2 * y3, k[:, 0] * y1 - k[:, 2] * y2 * y3 - k[:, 1] * y2**2,
                            k[:, 1] * y2**2], dim=-1)

    times = torch.tensor(PROBLEMS["Robertson"][4], dtype=F64)
    rtol, atol = 1e-6, 1e-12
    y0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    with torch.no_grad():
        solve(f, y0.repeat(n_batch, 1), times, rtol=rtol, atol=atol, method="rodas5p")  # warm-up
        t0 = time.perf_counter()
        batched = solve(f, y0.repeat(n_batch, 1), times, rtol=rtol, atol=atol, method="rodas5p")
        t_batch = time.perf_counter() - t0
        k_all = k
        k = k_all[:1]
        t0 = time.perf_counter()
        single = solve(f, y0, times, rtol=rtol, atol=atol, method="rodas5p")
        t_single = time.perf_counter() - t0
        k = k_all
    worst = 0.0
    t0 = time.perf_counter()
    for b in range(n_scipy):
        kb = k[b].tolist()

        def fn(t, y, kb=kb):
            return [-kb[0] * y[0] + kb[2] * y[1] * y[2], kb[0] * y[0] - kb[2] * y[1] * y[2] - kb[1] * y[1] ** 2,
                    kb[1] * y[1] ** 2]

        r = solve_ivp(fn, (0.0, times[-1].item()), [1.0, 0.0, 0.0], method="Radau", rtol=rtol, atol=atol,
                      t_eval=times.numpy())
        worst = max(worst, error(batched.ys[:, b].numpy(), r.y.T, 1e-6))
    t_scipy = (time.perf_counter() - t0) * n_batch / n_scipy
    return [
        f"Batch: {n_batch} Robertson systems (rate constants scaled by e^U(-0.5, 0.5)), rodas5p, rtol {rtol:g}, "
        f"atol {atol:g}, outputs at 10 log-spaced times to 1e5.",
        "",
        "| solve | time (s) | ratio | steps |",
        "|---|---|---|---|",
        f"| neuralode, one batched solve of {n_batch} | {t_batch:.3f} | {t_batch / t_single:.2f}× one system | "
        f"{batched.stats.n_accepted} |",
        f"| neuralode, one system | {t_single:.3f} | 1 | {single.stats.n_accepted} |",
        f"| scipy Radau, {n_batch} solves" + (f" (extrapolated from {n_scipy})" if n_scipy < n_batch else "")
        + f" | {t_scipy:.3f} | batched neuralode is {t_scipy / t_batch:.1f}× faster | |",
        "",
        f"Largest difference between the batched solve and scipy Radau over the {n_scipy} systems compared "
        f"(scaled as above): {worst:.2g}.",
    ]


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    setup()
    tols = [1e-4, 1e-6] if args.quick else [1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    lines = [
        "# Stiff problems: neuralode rodas5p, kvaerno5, auto, rosenbrock23 against scipy Radau, BDF, LSODA",
        "",
        "Written by `benchmarks/bench_stiff.py`" + (" --quick" if args.quick else "") + ". "
        "error: max over outputs and components of |y - ref| / (|ref| + scale), ref = scipy Radau at rtol 1e-13; "
        "atol = rtol x scale. steps: accepted steps. nfe includes the evaluations that form Jacobians "
        "(one per autograd Jacobian for neuralode; n for scipy's finite differences). "
        "time: seconds, and the ratio to scipy Radau measured in the same process.",
        "",
        machine_markdown(),
        "",
    ]
    for method in ("rodas5p", "rosenbrock23", "kvaerno5", "auto"):  # warm-up: first calls pay for imports and allocations
        run_ours("OREGO", method, 1e-3)
    for name in PROBLEMS:
        ref = reference(name)
        scale = PROBLEMS[name][3]
        lines += [f"## {name}", "", "| rtol | method | error | steps | nfe | Jacobians | time (s) | time / Radau |",
                  "|---|---|---|---|---|---|---|---|"]
        for rtol in tols:
            rows = []
            radau = run_scipy(name, "Radau", rtol)
            runs = [("neuralode rodas5p", run_ours(name, "rodas5p", rtol)),
                    ("neuralode kvaerno5", run_ours(name, "kvaerno5", rtol)),
                    ("neuralode auto", run_ours(name, "auto", rtol))]
            if rtol >= 1e-5:
                runs.append(("neuralode rosenbrock23", run_ours(name, "rosenbrock23", rtol)))
            runs += [("scipy Radau", radau), ("scipy BDF", run_scipy(name, "BDF", rtol)),
                     ("scipy LSODA", run_scipy(name, "LSODA", rtol))]
            for label, (ys, steps, nfe, njev, seconds) in runs:
                rows.append(f"| {rtol:g} | {label} | {error(ys, ref, scale):.2g} | {steps} | {nfe} | {njev} | "
                            f"{seconds:.3f} | {seconds / radau[4]:.2f} |")
            lines += rows
            print("\n".join(rows), flush=True)
        lines.append("")
    lines += batch_case(256, 32 if args.quick else 256)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stiff.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'stiff.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
