"""Every gradient mode on three workloads: time, evaluations, memory and accuracy, and which to use.

Writes ``benchmarks/results/gradients.md``.

    python benchmarks/bench_gradients.py [--quick]

Workloads (float32 for time and memory):

1. MLP Neural ODE 32→128→128→32 (tanh), batch 256, dopri5 at rtol = atol = 1e-6, 10 output times, loss
   ``mean(ys²)`` (bench_peers' and bench_adjoint's MLP).
2. The ODE-Net MNIST block, ``ConvODEFunc(64)`` on a ``(64, 64, 6, 6)`` input, dopri5 at 1e-3, ``t = [0, 1]``,
   loss ``mean(y(1) · w)`` with a fixed random ``w`` (bench_adjoint's ODE-Net row).
3. A CNF on 8 gaussians: ``neuralode.models.cnf.build_cnf(2)`` at its defaults (ConcatMLP 2→64→64→64→2,
   tanh, exact trace, dopri5 at 1e-5, ``T = 1``), one batch of 256 samples, loss the negative log-likelihood.

Modes: backprop (``odeint``), per-step checkpointing (``options={"checkpoint": True}``), recursive checkpointing
(``options={"checkpoints": "auto"}``), the backsolve adjoint (``odeint_adjoint``,
``adjoint_options={"interpolate": False}``), the interpolating adjoint (``{"interpolate": True}``) and the
Gauss adjoint (``{"quadrature": True}``).

Per mode and workload:

- **time**: forward + backward, all modes run in turn in each repetition (the order rotated every repetition)
  so that the shared machine's load reaches them alike; the ratio is the mode's time over backprop's in the
  same repetition, median and range over repetitions;
- **NFE** forward and backward, counted by :class:`~benchmarks.common.CountNFE` around the dynamics (backward
  counts every evaluation made during ``backward()``: adjoint evaluations, quadrature nodes, recomputed steps);
- **memory**: (a) the peak of bytes allocated by ``malloc`` above the level before the call, sampled at every
  evaluation of the dynamics and after ``backward()`` (glibc ``mallinfo2``; PyTorch's CPU tensors come from
  ``malloc``): everything the mode holds, its own records (checkpoints, interpolants) included; and (b) the
  peak of bytes autograd saved for backward (:func:`~benchmarks.common.measure_saved_bytes`, as ``adjoint.md``),
  which does not see tensors a mode keeps outside autograd's saved tensors, nor those
  ``torch.utils.checkpoint`` recomputes;
- **accuracy**: the relative 2-norm error of the gradient with respect to ``y0`` and the parameters against
  backprop's through the same solve, in float64 at a tight tolerance (a separate, smaller pass), and in
  float32 at the workload's own tolerance.

Then the Gauss adjoint against the backsolve and interpolating adjoints on an MLP with over a million
parameters (``ConcatMLP`` 64→1024→1024→64 with time appended to every layer's input, float32, dopri5).
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

import neuralode
from benchmarks.bench_checkpoints import _libc, allocated
from benchmarks.common import (
    CountNFE,
    MLPField,
    fmt_bytes,
    markdown_table,
    measure_saved_bytes,
    parse_args,
    setup,
    write_markdown,
    zero_grads,
)
from neuralode.datasets.toy2d import sample_toy
from neuralode.models import ConvODEFunc
from neuralode.models.cnf import ConcatMLP, build_cnf, standard_normal_logprob

State = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Mode:
    """A gradient mode: ``odeint`` with extra ``options``, or ``odeint_adjoint`` with ``adjoint_options``."""

    call: str
    adjoint: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    adjoint_options: dict[str, Any] = field(default_factory=dict)

    def solve(self, func: nn.Module, y0: State, t: torch.Tensor, kw: dict[str, Any]) -> State:
        options = {**kw.get("options", {}), **self.options}
        rest = {k: v for k, v in kw.items() if k != "options"}
        if self.adjoint:
            return neuralode.odeint_adjoint(
                func, y0, t, options=options or None, adjoint_options=self.adjoint_options, **rest
            )
        return neuralode.odeint(func, y0, t, options=options or None, **rest)


MODES: dict[str, Mode] = {
    "backprop": Mode("`odeint`"),
    "checkpoint": Mode('`options={"checkpoint": True}`', options={"checkpoint": True}),
    "checkpoints auto": Mode('`options={"checkpoints": "auto"}`', options={"checkpoints": "auto"}),
    "backsolve adjoint": Mode(
        '`odeint_adjoint`, `adjoint_options={"interpolate": False}`',
        adjoint=True,
        adjoint_options={"interpolate": False},
    ),
    "interpolating adjoint": Mode(
        '`odeint_adjoint`, `adjoint_options={"interpolate": True}`', adjoint=True, adjoint_options={"interpolate": True}
    ),
    "Gauss adjoint": Mode(
        '`odeint_adjoint`, `adjoint_options={"quadrature": True}`', adjoint=True, adjoint_options={"quadrature": True}
    ),
}
ADJOINTS = ("backsolve adjoint", "interpolating adjoint", "Gauss adjoint")
#: The modes that differentiate the discretised solve itself: backprop's gradient to rounding.
CHECKPOINTED = ("checkpoint", "checkpoints auto")


# --------------------------------------------------------------------------------------------
# Workloads.


@dataclass
class Problem:
    """One solve to differentiate: ``loss(mode.solve(func, y0, t, kw))`` with respect to ``y0`` and ``func``'s
    parameters."""

    func: nn.Module
    y0: State
    t: torch.Tensor
    loss: Callable[[State], torch.Tensor]
    kw: dict[str, Any]

    def leaves(self) -> list[torch.Tensor]:
        ys = [self.y0] if isinstance(self.y0, torch.Tensor) else list(self.y0)
        return [y for y in ys if y.requires_grad] + list(self.func.parameters())


@dataclass(frozen=True)
class Workload:
    """``make(dtype, rtol, small)`` builds the problem; the float64 accuracy pass asks for ``small=True`` (a
    smaller batch) at the tolerance ``rtol64``."""

    name: str
    description: str
    make: Callable[[torch.dtype, float | None, bool], Problem]
    rtol64: float


def mlp_problem(quick: bool) -> Callable[[torch.dtype, float | None, bool], Problem]:
    sizes, batch, n_out = ([4, 8, 4], 8, 3) if quick else ([32, 128, 128, 32], 256, 10)

    def make(dtype: torch.dtype, rtol: float | None, small: bool) -> Problem:
        torch.manual_seed(0)
        func = MLPField(sizes, dtype=dtype)
        y0 = torch.randn(batch, sizes[0], dtype=dtype, requires_grad=True)  # (batch, dim)
        t = torch.linspace(0.0, 1.0, n_out, dtype=dtype)
        tol = rtol or (1e-3 if quick else 1e-6)
        return Problem(func, y0, t, lambda ys: ys.pow(2).mean(), dict(rtol=tol, atol=tol, method="dopri5"))

    return make


def odenet_problem(quick: bool) -> Callable[[torch.dtype, float | None, bool], Problem]:
    channels, batch = (2, 1) if quick else (64, 64)

    def make(dtype: torch.dtype, rtol: float | None, small: bool) -> Problem:
        torch.manual_seed(0)
        func = ConvODEFunc(channels).to(dtype)
        generator = torch.Generator().manual_seed(1)
        n = min(batch, 4) if small else batch
        y0 = torch.randn(n, channels, 6, 6, generator=generator, dtype=dtype).requires_grad_(True)
        weight = torch.randn(n, channels, 6, 6, generator=generator, dtype=dtype)
        t = torch.tensor([0.0, 0.25 if quick else 1.0], dtype=dtype)
        tol = rtol or 1e-3
        return Problem(func, y0, t, lambda ys: (ys[-1] * weight).mean(), dict(rtol=tol, atol=tol, method="dopri5"))

    return make


def cnf_problem(quick: bool) -> Callable[[torch.dtype, float | None, bool], Problem]:
    hidden, batch = ((8,), 8) if quick else ((64, 64, 64), 256)

    def make(dtype: torch.dtype, rtol: float | None, small: bool) -> Problem:
        torch.manual_seed(0)
        model = build_cnf(2, hidden_dims=hidden).to(dtype)
        n = min(batch, 64) if small else batch
        x = sample_toy("8gaussians", n, generator=torch.Generator().manual_seed(2), dtype=dtype)
        state = (x, torch.zeros(n, 1, dtype=dtype))  # (z, Δlogp)
        t = torch.tensor([0.0, model.T], dtype=dtype)

        def nll(ys: State) -> torch.Tensor:
            assert isinstance(ys, tuple)
            z, dlogp = ys[0][-1], ys[1][-1, :, 0]
            return -(standard_normal_logprob(z) - dlogp).mean()

        tol = rtol or (1e-3 if quick else model.rtol)
        return Problem(model.dynamics, state, t, nll, dict(rtol=tol, atol=tol, method=model.method))

    return make


def workloads(quick: bool) -> list[Workload]:
    return [
        Workload(
            "MLP",
            "MLP 4→8→4, batch 8, dopri5 1e-3, 3 output times (quick)"
            if quick
            else "MLP 32→128→128→32 (tanh), batch 256, float32, dopri5 rtol = atol = 1e-6, t = linspace(0, 1, 10), "
            "loss mean(ys²)",
            mlp_problem(quick),
            1e-4 if quick else 1e-9,
        ),
        Workload(
            "ODE-Net block",
            "ConvODEFunc(2) on (1, 2, 6, 6), dopri5 1e-3, t = [0, 0.25] (quick)"
            if quick
            else "ConvODEFunc(64) (group norm, ReLU, two 3×3 convolutions with a time channel) on (64, 64, 6, 6), "
            "float32, dopri5 rtol = atol = 1e-3, t = [0, 1], loss mean(y(1) · w). Its ReLUs make the field "
            "non-smooth: as the tolerance falls, backprop's gradient of the discrete solve and the adjoints' "
            "gradient of the ODE approach each other slowly",
            odenet_problem(quick),
            1e-4 if quick else 1e-8,
        ),
        Workload(
            "CNF",
            "CNF 2→8→2, batch 8, exact trace, dopri5 1e-3 (quick)"
            if quick
            else "CNF on 8 gaussians, `build_cnf(2)` at its defaults (ConcatMLP 2→64→64→64→2, tanh, exact trace, "
            "dopri5 rtol = atol = 1e-5, T = 1), one batch of 256, loss the negative log-likelihood",
            cnf_problem(quick),
            1e-4 if quick else 1e-9,
        ),
    ]


# --------------------------------------------------------------------------------------------
# Measuring.


class Probe(CountNFE):
    """:class:`CountNFE` that also samples the peak of :func:`allocated` at every evaluation."""

    def __init__(self, func: nn.Module) -> None:
        super().__init__(func)
        self.peak = 0

    def forward(self, t, y):
        out = super().forward(t, y)
        if _libc is not None:
            self.peak = max(self.peak, allocated())
        return out


@dataclass
class Result:
    """One mode on one workload; ``error`` is set instead when the mode fails."""

    times: list[float] = field(default_factory=list)
    nfe: tuple[int, int] = (0, 0)
    malloc_peak: int | None = None
    saved_peak: int | None = None
    grad: torch.Tensor | None = None  # float32, at the workload's tolerance
    error64: float | str | None = None  # a number, or the failure of the float64 pass
    error: str | None = None


def _flat_grad(leaves: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in leaves])


def one_pass(mode: Mode, problem: Problem, probe: Probe) -> tuple[int, int]:
    """Forward + backward through ``probe``; (forward NFE, backward NFE)."""
    zero_grads(problem.func, *problem.leaves())
    probe.reset()
    ys = mode.solve(probe, problem.y0, problem.t, problem.kw)
    forward = probe.nfe
    problem.loss(ys).backward()
    return forward, probe.nfe - forward


def _failure(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"fails: {type(exc).__name__}: {text[:160]}" + ("…" if len(text) > 160 else "")


def measure_workload(workload: Workload, reps: int, modes: dict[str, Mode], warmup: bool = True) -> dict[str, Result]:
    """Counts, memory, ``reps`` alternated timings and the float64 accuracy of every mode on ``workload``.

    ``warmup=False`` (the smoke run) skips the warm-up pass and the timing repetitions: the counting pass is then
    the one timing sample.
    """
    problem = workload.make(torch.float32, None, False)
    probe = Probe(problem.func)
    results = {name: Result() for name in modes}
    # Warm-up, counts, gradients and failures.
    for name, mode in modes.items():
        try:
            if warmup:
                one_pass(mode, problem, probe)
            start = time.perf_counter()
            results[name].nfe = one_pass(mode, problem, probe)
            if not warmup:  # a smoke run: this pass is the one timing sample
                results[name].times.append(time.perf_counter() - start)
            results[name].grad = _flat_grad(problem.leaves())
        except Exception as exc:  # a mode that cannot differentiate this workload is reported, not timed
            results[name].error = _failure(exc)
    live = [name for name in modes if results[name].error is None]
    # Memory: malloc peak above the level before the call, then autograd's saved bytes.
    for name in live:
        mode = modes[name]
        zero_grads(problem.func, *problem.leaves())
        if _libc is not None:
            probe.peak = base = allocated()
            one_pass(mode, problem, probe)
            results[name].malloc_peak = max(probe.peak, allocated()) - base
        zero_grads(problem.func, *problem.leaves())
        saved = measure_saved_bytes(lambda: problem.loss(mode.solve(probe, problem.y0, problem.t, problem.kw)))
        results[name].saved_peak = saved.peak_distinct
    # Time: every live mode once per repetition, the order rotated.
    for r in range(reps if warmup else 0):
        order = live[r % len(live) :] + live[: r % len(live)]
        for name in order:
            start = time.perf_counter()
            one_pass(modes[name], problem, probe)
            results[name].times.append(time.perf_counter() - start)
    # Accuracy: float64 at a tight tolerance against backprop through the same solve.
    tight = workload.make(torch.float64, workload.rtol64, True)
    tight_probe = CountNFE(tight.func)
    grads64: dict[str, torch.Tensor] = {}
    for name in live:
        try:
            one_pass(modes[name], tight, tight_probe)
            grads64[name] = _flat_grad(tight.leaves())
        except Exception as exc:  # reported in the table's accuracy column
            results[name].error64 = _failure(exc)
    ref = grads64.get("backprop")
    for name, g in grads64.items():
        if ref is not None:
            results[name].error64 = float((g - ref).norm() / ref.norm())
    return results


def ratios(results: dict[str, Result], name: str, ref: str) -> list[float]:
    return [a / b for a, b in zip(results[name].times, results[ref].times)]


def ratio_text(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):.2f}× [{min(values):.2f}–{max(values):.2f}]"


def _sci(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "—"
    return "0" if x == 0 else f"{x:.1e}"


def workload_table(results: dict[str, Result], workload: Workload, modes: dict[str, Mode]) -> str:
    ref32 = results["backprop"].grad
    rows = []
    for name, res in results.items():
        if res.error is not None:
            rows.append([name, res.error, "", "", "", "", "", ""])
            continue
        err32 = (
            _sci(float((res.grad - ref32).norm() / ref32.norm())) if res.grad is not None and ref32 is not None else "—"
        )
        rows.append(
            [
                name,
                "1" if name == "backprop" else ratio_text(ratios(results, name, "backprop")),
                f"{statistics.median(res.times) * 1e3:.0f} ms",
                f"{res.nfe[0]} + {res.nfe[1]}",
                fmt_bytes(res.malloc_peak) if res.malloc_peak is not None else "—",
                fmt_bytes(res.saved_peak) if res.saved_peak is not None else "—",
                res.error64 if isinstance(res.error64, str) else _sci(res.error64),
                err32,
            ]
        )
    headers = [
        "mode",
        "time ÷ backprop's [range]",
        "median time",
        "NFE fwd + bwd",
        "peak allocated (malloc)",
        "peak saved by autograd",
        f"grad error, float64 at {workload.rtol64:g}",
        "grad vs backprop, float32 at the workload's tol",
    ]
    return markdown_table(headers, rows)


def advice(results: dict[str, Result]) -> str:
    """The choice the numbers make: fastest, least memory, and the fastest mode that saves memory."""
    if results["backprop"].error is not None:
        return "backprop fails: nothing to compare with."
    live = {n: r for n, r in results.items() if r.error is None}
    med = {n: statistics.median(ratios(results, n, "backprop")) if n != "backprop" else 1.0 for n in live}
    mem = {n: r.malloc_peak if r.malloc_peak is not None else r.saved_peak or 0 for n, r in live.items()}
    fastest = min(med, key=med.__getitem__)
    leanest = min(mem, key=mem.__getitem__)
    bp_mem = mem.get("backprop", 0)
    savers = [n for n in live if n != "backprop" and bp_mem and mem[n] <= bp_mem / 2]
    lines = [
        f"fastest: **{fastest}** ({med[fastest]:.2f}× backprop's time); least memory: **{leanest}** "
        f"({fmt_bytes(mem[leanest])}, {mem[leanest] / bp_mem:.2g}× backprop's)"
        if bp_mem
        else f"fastest: **{fastest}**; least memory: **{leanest}**"
    ]
    if savers:
        best = min(savers, key=med.__getitem__)
        lines.append(
            f"fastest of the modes holding at most half backprop's memory: **{best}** ({med[best]:.2f}× the time, "
            f"{mem[best] / bp_mem:.2g}× the memory)"
        )
        exact = [n for n in savers if n in CHECKPOINTED]
        if exact and best not in exact:
            best = min(exact, key=med.__getitem__)
            lines.append(
                f"of those giving backprop's gradient: **{best}** ({med[best]:.2f}× the time, "
                f"{mem[best] / bp_mem:.2g}× the memory)"
            )
    ref = results["backprop"].grad
    off = {
        n: float((r.grad - ref).norm() / ref.norm())
        for n, r in live.items()
        if n in ADJOINTS and r.grad is not None and ref is not None
    }
    if off:
        lo, hi = f"{min(off.values()):.1g}", f"{max(off.values()):.1g}"
        lines.append(
            f"at the workload's tolerance the adjoints' gradients are {lo if lo == hi else f'{lo} to {hi}'} "
            "(relative) from backprop's"
        )
    failed = [n for n, r in results.items() if r.error is not None]
    if failed:
        lines.append("fails: " + ", ".join(failed))
    return "; ".join(lines) + "."


# --------------------------------------------------------------------------------------------
# The Gauss adjoint at over a million parameters.


def big_mlp_rows(quick: bool, reps: int) -> tuple[str, list[list[str]], list[str]]:
    width, dim = (32, 8) if quick else (1024, 64)
    tol = 1e-4 if quick else 1e-5
    rows: list[list[str]] = []
    verdicts: list[str] = []
    for batch in (1, 64) if not quick else (1, 4):
        torch.manual_seed(0)
        func = ConcatMLP(dim, (width, width))
        n_params = sum(p.numel() for p in func.parameters())
        y0 = torch.randn(batch, dim, requires_grad=True)
        t = torch.linspace(0.0, 1.0, 5)
        problem = Problem(func, y0, t, lambda ys: ys.pow(2).mean(), dict(rtol=tol, atol=tol, method="dopri5"))
        modes = {n: MODES[n] for n in ("backprop", *ADJOINTS)}
        res = {n: Result() for n in modes}
        probe = Probe(func)
        for name, mode in modes.items():
            try:
                if not quick:
                    one_pass(mode, problem, probe)
                res[name].nfe = one_pass(mode, problem, probe)
                res[name].grad = _flat_grad(problem.leaves())
            except Exception as exc:
                res[name].error = _failure(exc)
        live = [n for n in modes if res[n].error is None]
        for r in range(reps):
            order = live[r % len(live) :] + live[: r % len(live)]
            for name in order:
                start = time.perf_counter()
                one_pass(modes[name], problem, probe)
                res[name].times.append(time.perf_counter() - start)
        gauss = res["Gauss adjoint"]
        for name in modes:
            x = res[name]
            if x.error is not None:
                rows.append([f"{batch}", name, x.error, "", "", "", ""])
                continue
            g_ref = gauss.grad
            diff = (
                _sci(float((x.grad - g_ref).norm() / g_ref.norm())) if g_ref is not None and x.grad is not None else "—"
            )
            rows.append(
                [
                    f"{batch}",
                    name,
                    "1" if name == "Gauss adjoint" or gauss.error else ratio_text(ratios(res, "Gauss adjoint", name)),
                    "1" if name == "backprop" else ratio_text(ratios(res, name, "backprop")),
                    f"{statistics.median(x.times) * 1e3:.0f} ms",
                    f"{x.nfe[0]} + {x.nfe[1]}",
                    diff,
                ]
            )
        if gauss.error is None and res["backsolve adjoint"].error is None:
            r = statistics.median(ratios(res, "Gauss adjoint", "backsolve adjoint"))
            verdicts.append(
                f"batch {batch}: Gauss ÷ backsolve {r:.2f}× — the Gauss adjoint is "
                + ("**faster**" if r < 1 else "**not faster**")
            )
    label = (
        f"ConcatMLP {dim}→{width}→{width}→{dim} with time appended to every layer's input (tanh), {n_params:,} "
        f"parameters, float32, dopri5 rtol = atol = {tol:g}, t = linspace(0, 1, 5), loss mean(ys²), {reps} repetitions"
    )
    return label, rows, verdicts


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> Path:
    # measure_saved_bytes runs the garbage collector after each measurement; the objects alive now (modules,
    # torch's own) are set aside so that each collection walks only what the measurements made.
    gc.freeze()
    try:
        return _main(argv)
    finally:
        gc.unfreeze()


def _main(argv: list[str] | None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv, extra=_extra)
    setup()
    start = time.perf_counter()
    reps = 1 if args.quick else args.reps
    sections = []
    summary_rows = []
    for workload in workloads(args.quick):
        t0 = time.perf_counter()
        results = measure_workload(
            workload, reps if workload.name != "ODE-Net block" else max(1, reps // 2), MODES, warmup=not args.quick
        )
        text = advice(results)
        summary_rows.append([workload.name, text])
        sections.append(
            f"## {workload.name}\n\n{workload.description}.\n\n"
            + workload_table(results, workload, MODES)
            + f"\n\nWhich to use (from the numbers above): {text}"
        )
        print(sections[-1] + f"\n\n[{workload.name}: {time.perf_counter() - t0:.0f} s]\n", flush=True)
    t0 = time.perf_counter()
    label, rows, verdicts = big_mlp_rows(args.quick, reps)
    sections.append(
        "## The Gauss adjoint at over a million parameters\n\n"
        f"{label}. Gauss ÷ mode: the Gauss adjoint's time over the mode's in the same repetition (below 1: "
        "Gauss is faster). Grad vs Gauss: relative 2-norm difference of the gradients.\n\n"
        + markdown_table(
            [
                "batch",
                "mode",
                "Gauss ÷ this mode [range]",
                "time ÷ backprop's [range]",
                "median time",
                "NFE fwd + bwd",
                "grad vs Gauss",
            ],
            rows,
            "llrrrrr",
        )
        + "\n\n"
        + "; ".join(verdicts)
        + "."
    )
    print(sections[-1] + f"\n\n[big MLP: {time.perf_counter() - t0:.0f} s]\n", flush=True)
    sections.insert(0, "## Which to use\n\n" + markdown_table(["workload", "which to use"], summary_rows, "ll"))
    intro = (
        f"Generated by `python benchmarks/bench_gradients.py{' --quick' if args.quick else ''}` in "
        f"{time.perf_counter() - start:.0f} s, {reps} repetitions (the ODE-Net block {max(1, reps // 2)}). "
        "Modes: "
        + "; ".join(f"*{name}* {mode.call}" for name, mode in MODES.items())
        + ". Time: forward + backward, the modes run in turn in each repetition (order rotated), one torch "
        "thread; ratio to backprop's time in the same repetition, median [range]. NFE: evaluations of the "
        "dynamics in the forward pass + in `backward()` (recomputed steps, adjoint evaluations and quadrature "
        "nodes included). Peak allocated (malloc): the most bytes allocated above the level before the call "
        "(glibc `mallinfo2`, sampled at every evaluation and after `backward()`): everything held, the modes' "
        "own records (checkpoints, dense output) included. Peak saved by autograd: the most bytes of tensors "
        "packed for backward alive at once (`saved_tensors_hooks`, as `adjoint.md`); blind to what a mode "
        "keeps outside autograd and to what `torch.utils.checkpoint` recomputes. Grad error: relative 2-norm "
        "error of the gradient with respect to y0 and the parameters against backprop's through the same "
        "solve (float64 pass: the ODE-Net block at batch 4, the CNF at batch 64). The machine is shared: "
        "ratios, not absolute times."
    )
    path = write_markdown(args.out / "gradients.md", "Gradient modes: time, memory, accuracy", intro, sections)
    print(f"wrote {path}")
    return path


def _extra(parser: Any) -> None:
    parser.add_argument("--reps", type=int, default=8, help="timing repetitions per workload (default 8)")


if __name__ == "__main__":
    main()
