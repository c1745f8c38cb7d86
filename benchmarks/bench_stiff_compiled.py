"""Small stiff systems with rodas5p's run of steps compiled (``options={"compile": True}``) against the eager
rodas5p and scipy's Radau.

    python benchmarks/bench_stiff_compiled.py [--quick] [--pairs N] [--out DIR]   (writes DIR/stiff_compiled.md)

The problems of ``bench_stiff.py`` that the issue's target names (Robertson to t = 1e5, Van der Pol mu = 1000,
HIRES, OREGO; Hairer & Wanner II, IV.10), float64 on one thread, rtol 1e-4, 1e-6 (the target's) and 1e-8 with
atol = rtol * the problem's absolute scale. Per problem and tolerance the three solves run alternately in one
process, ``--pairs`` rounds: the ratio is the median of the per-round ratios, with the interquartile range; the
millisecond columns are medians, for scale only. The compiled run (``neuralode.solvers.fast.device_run``, its
Rosenbrock kernel) forms ``J`` and ``df/dt`` by ``torch.func.jacrev``, factors ``I / (h gamma) - J`` with LAPACK and
runs ``compile_steps`` attempts per call inside one compiled ``while_loop``; its first call compiles (the column
"first call": that call's seconds in this process, with whatever inductor's on-disk cache held). Steps: accepted
(rejected); error as in ``bench_stiff.py``: max |y - ref| / (|ref| + scale) over the outputs, ref = scipy Radau at
rtol 1e-13.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from scipy.integrate import solve_ivp

from benchmarks.bench_stiff import PROBLEMS, _np_rhs, _torch_rhs, error, reference
from benchmarks.common import alternate, iqr_text, machine_markdown, parse_args, setup
from neuralode import solve

F64 = torch.float64
NAMES = ("Robertson", "Van der Pol mu=1000", "HIRES", "OREGO")


def solvers(name: str, rtol: float) -> dict:
    """The three solves of problem ``name`` at ``rtol``: each a function returning ``(outputs, steps, rejected)``.
    The torch right-hand side is made once, so the compiled run's graph (cached per func) is reused."""
    f, y0, t_end, scale, times = PROBLEMS[name]
    rhs, y0_t, t_t = _torch_rhs(f), torch.tensor(y0, dtype=F64), torch.tensor(times, dtype=F64)

    def ours(options):
        def run():
            with torch.no_grad():
                sol = solve(rhs, y0_t, t_t, rtol=rtol, atol=rtol * scale, method="rodas5p", options=options)
            return sol.ys.numpy(), sol.stats.n_accepted, sol.stats.n_rejected

        return run

    def radau():
        r = solve_ivp(_np_rhs(f), (0.0, t_end), y0, method="Radau", rtol=rtol, atol=rtol * scale, dense_output=True)
        return r.sol(times).T, len(r.t) - 1, None

    return {"rodas5p": ours({}), "rodas5p, compile=True": ours({"compile": True}), "scipy Radau": radau}


def measure(name: str, rtol: float, pairs: int) -> list[str]:
    ref, scale = reference(name), PROBLEMS[name][3]
    fns = solvers(name, rtol)
    results, first = {}, {}
    for label, fn in fns.items():
        start = time.perf_counter()
        results[label] = fn()
        first[label] = time.perf_counter() - start
    times = alternate(fns, pairs)
    rows = []
    for label in fns:
        ys, steps, rejected = results[label]
        over = [a / b for a, b in zip(times[label], times["scipy Radau"])]
        rows.append(
            f"| {name} | {rtol:g} | {label} | {error(ys, ref, scale):.2g} | {steps}"
            f"{'' if rejected is None else f' ({rejected})'} | {iqr_text(over)} | "
            f"{statistics.median(times[label]) * 1e3:.2f} ms | {first[label]:.1f} s |"
        )
    return rows


def main(argv=None) -> int:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        lambda p: p.add_argument("--pairs", type=int, default=15, help="alternating rounds per row (--quick: 5)"),
    )
    setup()
    tols = [1e-6] if args.quick else [1e-4, 1e-6, 1e-8]
    pairs = 5 if args.quick else args.pairs
    start = time.perf_counter()
    rows = []
    for name in NAMES:
        for rtol in tols:
            new = measure(name, rtol, pairs)
            rows += new
            print("\n".join(new), flush=True)
    lines = [
        "# Small stiff systems: rodas5p compiled, against rodas5p eager and scipy Radau",
        "",
        f"Written by `benchmarks/bench_stiff_compiled.py`{' --quick' if args.quick else ''} in "
        f"{time.perf_counter() - start:.0f} s; {pairs} alternating rounds per row. See the script's docstring for "
        "what each column is.",
        "",
        machine_markdown(),
        "",
        "| problem | rtol | solver | error | steps (rejected) | time / scipy Radau [IQR] | time | first call |",
        "| --- | --: | --- | --: | --: | --: | --: | --: |",
        *rows,
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stiff_compiled.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'stiff_compiled.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
