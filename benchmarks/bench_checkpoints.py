"""Checkpointed backpropagation with a memory budget (``options={"checkpoints": K}``): states stored,
steps re-run, peak memory and time against backpropagation through the same solve.

Three parts, written to ``benchmarks/results/checkpoints.md``:

1. **The schedule** (exact counts, no timing): for a solve of ``n`` rk4 steps, the most states stored
   (``Solution.stats.max_stored_states``) and the steps the backward pass re-runs per step
   (``n_recomputed_steps / n``), read from the plan the forward pass reports (on this fixed grid the steps are
   known in advance, so the forward pass stores revolve's first-sweep checkpoints). Beside them, revolve's
   fewest (Griewank and Walther 2000: ``r n - C(K + r, r - 1)`` steps advanced, less the ``n - 1`` of the first
   sweep, which is the forward pass's own, plus the ``n - 1`` re-runs that differentiate the steps before the
   last, which the first sweep tapes), and the counts of an adaptive solve of the same ``n`` steps, whose
   forward pass thins up to ``K`` checkpoints online and whose backward pass keeps the subset that re-runs
   fewest (simulated with the module's own :func:`recursive.keep_checkpoints` and :func:`recursive.schedule`).
2. **Peak memory**: bytes allocated by the process above the level before the call, sampled by glibc's
   ``mallinfo2`` at every evaluation of the dynamics and at the end (PyTorch's CPU tensors are allocated with
   ``malloc``); given in bytes and in states' worth (the state is ``batch × dim`` floats).
3. **Time**: forward and backward of each mode against backpropagation's, alternating in one process, the
   median of per-pair ratios with its interquartile range.

Workload: rk4 with ``n`` steps over ``[0, 1]``, the dynamics an MLP 16→64→16 (tanh) in float32, batch 64
(``adjoint.md``'s memory workload); the loss is the squared final state; gradients with respect to ``y0``
and the parameters.
"""

from __future__ import annotations

import ctypes
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import markdown_table, parse_args, setup, time_pair, write_markdown  # noqa: E402
from neuralode import odeint, odeint_adjoint, solve  # noqa: E402
from neuralode.solvers.adjoint import recursive  # noqa: E402

DIM, HIDDEN, BATCH = 16, 64, 64


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = MallInfo2
except (OSError, AttributeError):  # not glibc >= 2.33: no memory column
    _libc = None


def allocated() -> int:
    """Bytes in use by ``malloc``: the heap's allocated blocks plus the ``mmap``-ed ones."""
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class MLP(nn.Module):
    def __init__(self, probe: list[int] | None = None, widths: tuple[int, ...] = (DIM, HIDDEN, DIM)):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        self.net = nn.Sequential(*layers[:-1])
        self.probe = probe  # [base, peak]: the peak of allocated() is sampled at each evaluation

    def forward(self, t, y):
        out = self.net(y)
        if self.probe is not None:
            self.probe[1] = max(self.probe[1], allocated())
        return out


# The timing workloads: (label, MLP widths, batch, step counts).
WORKLOADS = [
    ("MLP 16→64→16, batch 64", (DIM, HIDDEN, DIM), BATCH, [10, 100, 1000, 10_000]),
    ("MLP 32→128→128→32, batch 256", (32, 128, 128, 32), 256, [10, 100, 1000]),
]

MODES = {
    "forward only, no autograd": (odeint, {}),
    "backprop": (odeint, {}),
    "checkpoint=True": (odeint, {"checkpoint": True}),
    "checkpoints=8": (odeint, {"checkpoints": 8}),
    'checkpoints="auto"': (odeint, {"checkpoints": "auto"}),
    "odeint_adjoint": (odeint_adjoint, {}),
}


def run(func: nn.Module, y0: torch.Tensor, n: int, mode: str) -> None:
    solver, extra = MODES[mode]
    t = torch.tensor([0.0, 1.0])
    with torch.set_grad_enabled(mode != "forward only, no autograd"):
        y = solver(func, y0, t, method="rk4", options={"step_size": 1.0 / n, **extra})
    if y.requires_grad:
        y[-1].pow(2).sum().backward()


def schedule_rows(ns: list[int], budgets: list[int | str]) -> list[list[str]]:
    rows = []
    for k in budgets:
        for n in ns:
            func = MLP()
            y0 = torch.randn(BATCH, DIM, requires_grad=True)
            t = torch.tensor([0.0, 1.0])
            stats = solve(func, y0, t, method="rk4", options={"step_size": 1.0 / n, "checkpoints": k}).stats
            assert stats.n_accepted == n
            budget = recursive.auto_budget(n) if k == "auto" else k
            rows.append(
                [
                    str(k) if k != "auto" else '"auto"',
                    f"{n:,}",
                    str(budget),
                    str(stats.max_stored_states),
                    f"{stats.n_recomputed_steps / n:.2f}",
                    f"{fewest(n, budget) / n:.2f}",
                    f"{online_rule(n, budget) / n:.2f}",
                ]
            )
    return rows


def fewest(n: int, budget: int) -> int:
    """Revolve's fewest re-runs for ``n`` steps known in advance and ``budget`` slots, the start's included,
    with the forward pass as its first sweep, which tapes the last step: ``r n - C(budget + r, r - 1) - (n - 1)``
    steps advanced (``r`` the fewest sweeps with ``C(budget + r, budget) >= n``) plus ``n - 1`` re-runs with a
    graph."""
    r = 0
    while math.comb(budget + r, budget) < n:
        r += 1
    advanced = r * n - math.comb(budget + r, r - 1) if r else 0
    return advanced - (n - 1) + n - 1


def online_rule(n: int, budget: int) -> int:
    """Steps re-run when the steps are not known in advance (an adaptive solve): the forward pass thins its
    checkpoints online, holding at most ``budget`` (:class:`recursive.RecordingClock`; the last step is taped,
    not stored), the backward pass keeps the subset :func:`recursive.keep_checkpoints` picks, planned with the
    module's own :func:`recursive.schedule`."""
    store: list[int] = []
    spacing = 1
    for k in range(n - 1):
        if k % spacing == 0:
            if len(store) >= budget:
                spacing *= 2
                store = [i for i in store if i % spacing == 0]
            if k % spacing == 0:
                store.append(k)
    kept = recursive.keep_checkpoints(store, n - 1, budget)
    plan = SimpleNamespace(store=dict.fromkeys(kept), n_replayed=n - 1, budget=budget)
    return recursive.schedule(plan, lambda i, s: s, lambda i, s: None).recomputed


def memory_rows(ns: list[int]) -> list[list[str]]:
    state_bytes = BATCH * DIM * 4
    rows, base = [], {}
    for mode in MODES:
        cells = [mode]
        for n in ns:
            probe = [0, 0]
            func = MLP(probe)
            y0 = torch.randn(BATCH, DIM, requires_grad=True)
            run(func, y0, 2, mode)  # warm-up
            y0.grad = None
            func.zero_grad(set_to_none=True)
            probe[0] = probe[1] = allocated()
            run(func, y0, n, mode)
            extra = max(probe[1], allocated()) - probe[0]
            if mode == "forward only, no autograd":
                base[n] = extra
                cells.append(f"{extra / 2**10:,.0f} KiB")
            else:
                cells.append(f"{extra / 2**10:,.0f} KiB ({(extra - base[n]) / state_bytes:,.1f})")
        rows.append(cells)
    return rows


def time_rows(widths: tuple[int, ...], batch: int, ns: list[int], quick: bool) -> list[list[str]]:
    rows = []
    for mode in MODES:
        if mode in ("backprop", "forward only, no autograd"):
            continue
        cells = [mode]
        for n in ns:
            func = MLP(widths=widths)
            y0 = torch.randn(batch, widths[0], requires_grad=True)
            pairs = 3 if quick else max(3, min(15, 20_000 // n))
            timing = time_pair(
                lambda: run(func, y0, n, mode), lambda: run(func, y0, n, "backprop"), pairs=pairs, warmup=1
            )
            cells.append(timing.ratio_text())
        rows.append(cells)
    return rows


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    setup()
    start = time.perf_counter()
    ns = [10, 100, 1000] if args.quick else [10, 100, 1000, 10_000]
    sched = schedule_rows(ns, [4, 8, "auto"])
    mem = memory_rows(ns) if _libc is not None else []
    times = [
        (label, n_list, time_rows(widths, batch, n_list[:3] if args.quick else n_list, args.quick))
        for label, widths, batch, n_list in WORKLOADS
    ]
    sections = [
        "## 1. The schedule\n\nStates stored and steps re-run per step, from `Solution.stats` (the plan the "
        "forward pass reports, which the backward pass runs: `tests/test_checkpoints_budget.py`); on this fixed "
        "grid the forward pass stores revolve's first-sweep checkpoints. *revolve's fewest*: Griewank and "
        "Walther's minimum for `n` known in advance, the forward pass being its first sweep; *adaptive (online)*: "
        "the same `n` steps with the checkpoints an adaptive solve's forward pass keeps, `⌈K/2⌉` thinned online "
        "(its steps are not known in advance), planned by the same backward recursion.\n\n"
        + markdown_table(
            [
                "checkpoints",
                "steps n",
                "budget K",
                "most states stored",
                "re-run per step",
                "revolve's fewest",
                "adaptive (online)",
            ],
            sched,
        )
        + f'\n\nThe target: at most 2 + ⌈log₂ n⌉ states (`"auto"`: {", ".join(f"{recursive.auto_budget(n)} at n = {n:,}" for n in ns)}).',
        "## 2. Peak memory above the level before the call\n\nBytes allocated (glibc `mallinfo2`, sampled at every "
        f"evaluation and at the end), and in brackets in states' worth (one state: {BATCH} × {DIM} float32 = "
        f"{BATCH * DIM * 4 // 1024} KiB) above the first row. The first row is what a solve allocates without "
        "autograd: mostly the fixed grid's time tensors, made up front for every stage time (about 1.1 KiB a "
        "step), which every row holds too. The modes with a budget also hold one step's graph while they "
        "differentiate it (about 50 states' worth here), and the parameters' gradients.\n\n"
        + (
            markdown_table(["mode", *(f"n = {n:,}" for n in ns)], mem)
            if mem
            else "(no glibc `mallinfo2`: not measured)"
        ),
        "## 3. Time of forward + backward, relative to backpropagation's\n\n"
        + "\n\n".join(
            f"{label}:\n\n" + markdown_table(["mode", *(f"n = {n:,}" for n in n_list[: len(rows[0]) - 1])], rows)
            for label, n_list, rows in times
        ),
    ]
    path = write_markdown(
        args.out / "checkpoints.md",
        "Checkpointed backpropagation with a memory budget",
        f"Generated by `python benchmarks/bench_checkpoints.py{' --quick' if args.quick else ''}` in "
        f"{time.perf_counter() - start:.0f} s. "
        "rk4 with n steps on [0, 1], MLP 16→64→16 (tanh), float32, batch 64; loss the squared final state; "
        "gradients with respect to y0 and the parameters; one torch thread.",
        sections,
    )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
