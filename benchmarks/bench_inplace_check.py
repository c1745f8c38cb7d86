"""The cost of detecting a ``func`` that changes its input state in place.

Every evaluation of ``func`` reads the state's version counter before and after the call
(:func:`neuralode.solvers.problem.changed_in_place`), and the first evaluation gets a copy of
``y0``. This script times solves with the check against the same solves with it switched off
(``watches_versions`` patched to return False, which disables both), alternately in one process,
and writes ``benchmarks/results/inplace_check.md``.

    python benchmarks/bench_inplace_check.py [--quick]

Cases: the solver issue's small systems, where per-evaluation overhead weighs most.

1. MLP 2→16→2, batch 8, dopri5 at rtol = atol = 1e-8, 20 output times (the general loop).
2. The same MLP, rk4 with 200 fixed steps (the lean fixed-grid path).
3. MLP 32→128→128→32, batch 256, dopri5 at 1e-6.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import neuralode
from benchmarks.common import MLPField, fmt_ms, markdown_table, parse_args, time_pair
from neuralode.solvers import problem as problem_module


class _Unwatched:
    """Context: the in-place check switched off (the solve as it was before the check)."""

    def __enter__(self):
        self._saved = problem_module.watches_versions
        problem_module.watches_versions = lambda y: False

    def __exit__(self, *exc):
        problem_module.watches_versions = self._saved


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    pairs = 5 if args.quick else 100
    torch.manual_seed(0)
    torch.set_num_threads(1)
    small = MLPField([2, 16, 2])
    y_small = torch.randn(8, 2)
    big = MLPField([32, 128, 128, 32])
    y_big = torch.randn(256, 32)
    t20 = torch.linspace(0.0, 1.0, 20)
    t2 = torch.tensor([0.0, 1.0])
    cases = [
        ("MLP 2→16→2 ×8, dopri5 1e-8, 20 outputs", lambda: neuralode.solve(small, y_small, t20, rtol=1e-8, atol=1e-8)),
        (
            "MLP 2→16→2 ×8, rk4, 200 steps",
            lambda: neuralode.solve(small, y_small, t2, method="rk4", options={"step_size": 1 / 200}),
        ),
        ("MLP 32→128→128→32 ×256, dopri5 1e-6", lambda: neuralode.solve(big, y_big, t2, rtol=1e-6, atol=1e-6)),
    ]
    rows = []
    with torch.no_grad():
        for name, run in cases:
            nfe_on = run().stats.nfe
            with _Unwatched():
                nfe_off = run().stats.nfe

            def off(run=run):
                with _Unwatched():
                    return run()

            timing = time_pair(run, off, pairs=pairs)
            rows.append([name, nfe_on, nfe_off, fmt_ms(timing.ours_s), fmt_ms(timing.peer_s), timing.ratio_text()])
            print(rows[-1], flush=True)
    # The check itself: two reads of the version counter and a comparison, per evaluation.
    import timeit

    y = torch.randn(8, 2)
    n = 200_000
    per_check = min(timeit.repeat(lambda: y._version != y._version, number=n, repeat=5)) / n
    table = markdown_table(["case", "NFE (check)", "NFE (no check)", "with check", "without", "ratio [IQR]"], rows)
    text = (
        "# In-place check: cost per solve\n\n"
        "Solves with the version-counter check on every evaluation of `func` (and a copy of `y0` for the first) "
        "against the same solves with the check off, alternately in one process; median of "
        f"{pairs} pairs, forward only (`torch.no_grad()`), float32, one intra-op thread. Measured on the project's "
        "2-core AMD EPYC machine (shared with other jobs), torch 2.13.0 CPU, by "
        "`python benchmarks/bench_inplace_check.py`.\n\n" + table + "\n\n"
        f"The check alone (two version-counter reads and a comparison, timed with `timeit` inside a lambda, so the call of the lambda is included; best of 5): "
        f"{per_check * 1e9:.0f} ns per evaluation of `func`. The ratios' spread comes from the shared machine, "
        "not from the check.\n"
    )
    if not args.quick:
        (args.out / "inplace_check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
