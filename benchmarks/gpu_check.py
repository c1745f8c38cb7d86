"""GPU check: float32 CUDA solves against float64 CPU references, and CUDA timings against torchdiffeq.

Writes ``benchmarks/results/gpu.md``. Sized to finish in under five minutes on one GPU::

    .venv/bin/python benchmarks/gpu_check.py                   # on a machine with CUDA
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_cpu.md   # exercise it here

Without CUDA (``torch.cuda.is_available()`` False) and ``--device cuda`` (the default) it prints
why and exits 0 without writing anything. Exit status 1 means a correctness check failed.

1. Correctness: the check of ``tests/device_agreement.py``, which ``tests/test_method_conformance.py`` runs
   for every registered method on the CPU (and on CUDA where there is one), here as a table: every method
   ``solve`` accepts but scipy's, and every per-sample clock, on a damped rotation ``y' = A y`` (closed form
   ``y(t) = e^{-a t} R(ω t) y0``), batch 64, 11 outputs on [0, 5]; adaptive methods at rtol = atol = 1e-5,
   fixed-step ones with ``step_size`` 0.01 (implicit ones 0.05). The float32 solve on the device is compared
   with the same solve in float64 on the CPU, in tolerance units ``|y − y_ref| / (atol + rtol |y_ref|)``
   (pass: ≤ 10), and both with the closed form. Gradients (backprop and adjoint, dopri5) of ``y0``, ``a``
   and ``ω`` against float64 CPU gradients.
2. Timings against torchdiffeq on the device (median of alternating pairs, ``time_pair``, each
   call ending in ``torch.cuda.synchronize()``):
   - MLP 32→128→128→32, batch 256, dopri5 1e-6, 10 outputs, forward; and MLP 2→16→2, batch 8,
     midpoint, 200 fixed steps (where kernel launches are the cost). Eager, and with the func
     compiled by ``torch.compile(mode="reduce-overhead")`` (CUDA graphs; shapes are static), its
     first call's compile time reported, its answer checked against eager;
   - the MNIST ODE-Net training step (``neuralode.models.build_classifier("odenet")``, adjoint,
     dopri5 1e-3, batch 128 of random images: forward, cross-entropy, backward, SGD step) against
     the same network with torchdiffeq's ``odeint_adjoint`` block;
   - the CNF training step (``build_cnf``: ConcatMLP 64-64-64, exact trace, dopri5 1e-5, adjoint,
     batch 512 of 8-gaussians-like points) against ``torchdiffeq.odeint_adjoint`` with the seminorm.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
import torchdiffeq
from torch import nn

import neuralode
from benchmarks.common import (
    RESULTS_DIR,
    MLPField,
    PairTiming,
    TorchdiffeqAdjointBlock,
    fmt_ms,
    machine_markdown,
    markdown_table,
    time_pair,
)
from neuralode.models import build_classifier, build_cnf, standard_normal_logprob
from tests import device_agreement as agreement

# --------------------------------------------------------------------------------------------
# Correctness: the check of tests/device_agreement.py (also run by tests/test_method_conformance.py), as a table.


def _nfe(nfe) -> str:
    """Evaluations as a count; per-sample solves count per sample (a tensor): their total."""
    if isinstance(nfe, torch.Tensor):
        return f"{int(nfe.sum())} (per sample {int(nfe.min())}–{int(nfe.max())})"
    return str(nfe)


def correctness(device: torch.device, batch: int, names: list[str] | None = None) -> tuple[str, bool]:
    """Section 1 as markdown and whether every check passed; ``names`` restricts it to those cases' labels."""
    n_outputs, tol = 11, agreement.TOL
    rows, ok = [], True
    for case in agreement.cases(tol):
        if names is not None and case.label not in names:
            continue
        r = agreement.check_solve(case, device, batch, n_outputs, tol)
        ok &= r.passed
        verdict = "pass" if r.passed else "**FAIL**"
        if case.adaptive and r.err64 > agreement.PASS_UNITS:
            verdict += f" (the method's own float64 error is {r.err64:.0f} tolerance units)"
        rows.append(
            [
                f"`{case.label}`",
                case.steps,
                f"{r.units:.3g}",
                f"{r.err32:.3g}",
                f"{r.err64:.3g}",
                f"{_nfe(r.nfe32)} / {_nfe(r.nfe64)}",
                verdict,
            ]
        )
    table = markdown_table(
        [
            "method",
            "steps",
            f"{device.type} f32 vs cpu f64 (tol units)",
            f"{device.type} f32 vs exact",
            "cpu f64 vs exact",
            f"NFE {device.type} / cpu",
            "verdict",
        ],
        rows,
    )

    grad_rows = []
    for mode in ("backprop", "adjoint"):
        rel = agreement.gradient_distance(mode, device, batch, n_outputs, tol)
        passed = math.isfinite(rel) and rel <= agreement.GRAD_REL
        ok &= passed
        grad_rows.append([f"dopri5 {mode}", f"{rel:.2e}", "pass" if passed else "**FAIL**"])
    grad_table = markdown_table(
        ["gradient of sum(ys²) w.r.t. y0, a, ω", f"max |{device.type} f32 − cpu f64| / max |cpu f64|", "verdict"],
        grad_rows,
    )
    units = agreement.PASS_UNITS
    text = (
        "## 1. Correctness against float64 CPU references\n\n"
        f"Damped rotation (a = 0.1, ω = 2), batch {batch}, {n_outputs} outputs on [0, {agreement.T_END:g}]. "
        f"Tolerance units: |y − y_ref| / ({tol:g} + {tol:g} |y_ref|); pass when the {device.type} float32 solve is "
        f"within {units:g} units of the same solve in float64 on the CPU (an adaptive one also when it is as close "
        f"to the closed form as the float64 solve: 2× its error + {units:g} units). The columns against the closed "
        "form show each method's own error (large for the low-order fixed-step methods, as it should be).\n\n"
        + table
        + f"\n\nGradients (pass: relative difference ≤ {agreement.GRAD_REL:g}):\n\n"
        + grad_table
    )
    return text, ok


# --------------------------------------------------------------------------------------------
# Timings.


def _synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], None]:
    if device.type != "cuda":
        return lambda: (fn(), None)[1]

    def run() -> None:
        fn()
        torch.cuda.synchronize(device)

    return run


class CompiledFunc(nn.Module):
    """``torch.compile(func, mode="reduce-overhead")`` as a solver's ``func``.

    With CUDA graphs a replay writes its outputs into the same memory as the previous replay, and a
    Runge-Kutta step keeps every stage alive at once: the output is cloned (one copy kernel) so
    the stages stay distinct.
    """

    def __init__(self, func: nn.Module, mode: str) -> None:
        super().__init__()
        self.func = func
        self.compiled = torch.compile(func, mode=mode, fullgraph=True, dynamic=False)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.compiled(t, y).clone()


def _ratio_row(label: str, timing: PairTiming, extra: str = "") -> list[str]:
    return [label, timing.ratio_text(), fmt_ms(timing.ours_s), fmt_ms(timing.peer_s), extra]


def mlp_timings(device: torch.device, quick: bool, pairs: int, compile_mode: str | None) -> str:
    rows, notes = [], []
    cases = {
        "MLP 32→128→128→32, dopri5 1e-6, 10 outputs": (
            [32, 128, 128, 32],
            16 if quick else 256,
            torch.linspace(0.0, 1.0, 10),
            dict(rtol=1e-6, atol=1e-6, method="dopri5"),
        ),
        "MLP 2→16→2, midpoint, 200 fixed steps": (
            [2, 16, 2],
            8,
            torch.tensor([0.0, 1.0]),
            dict(method="midpoint", options={"step_size": 1.0 / 200}),
        ),
    }
    for label, (sizes, batch, t, kw) in cases.items():
        torch.manual_seed(0)
        func = MLPField(sizes).to(device)
        y0 = torch.randn(batch, sizes[0], device=device)
        t = t.to(device)
        label = f"{label}, batch {batch}"

        def solver(lib, f):
            def run():
                with torch.no_grad():
                    if isinstance(f, CompiledFunc) and device.type == "cuda":
                        torch.compiler.cudagraph_mark_step_begin()
                    return lib(f, y0, t, **kw)

            return run

        nd = _synced(solver(neuralode.odeint, func), device)
        tdq = _synced(solver(torchdiffeq.odeint, func), device)
        rows.append(_ratio_row(f"{label}: eager", time_pair(nd, tdq, pairs=pairs, per_side=True)))
        if compile_mode is None:
            continue
        try:
            cfunc = CompiledFunc(func, compile_mode)
            start = time.perf_counter()
            ys_c = solver(neuralode.odeint, cfunc)()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            compile_s = time.perf_counter() - start
            ys_e = solver(neuralode.odeint, func)()
            diff = float((ys_c - ys_e).abs().max())
            nd_c = _synced(solver(neuralode.odeint, cfunc), device)
            tdq_c = _synced(solver(torchdiffeq.odeint, cfunc), device)
            rows.append(
                _ratio_row(
                    f"{label}: both with compiled func",
                    time_pair(nd_c, tdq_c, pairs=pairs, per_side=True),
                    f"compile {compile_s:.1f} s; max |compiled − eager| {diff:.1e}",
                )
            )
            timing = time_pair(nd_c, nd, pairs=pairs, per_side=True)
            rows.append(
                [
                    f"{label}: neuralode compiled / neuralode eager",
                    timing.ratio_text(),
                    fmt_ms(timing.ours_s),
                    fmt_ms(timing.peer_s),
                    "(peer column: neuralode eager)",
                ]
            )
        except Exception as exc:  # compile support differs by platform; report it, go on
            notes.append(
                f"- {label}: `torch.compile(mode={compile_mode!r})` failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            )
    compiled = (
        "The compiled rows give both libraries the same compiled func (`torch.compile(func, "
        f"mode={compile_mode!r}, fullgraph=True)`, output cloned so CUDA-graph replays do not overwrite "
        "earlier stages); compile time is the first solve's."
        if compile_mode
        else "(`--no-compile`: eager only.)"
    )
    text = (
        "## 2. MLP solves against torchdiffeq\n\n"
        f"Forward solves under `torch.no_grad()`, float32. {compiled}\n\n"
        + markdown_table(["case", "neuralode / torchdiffeq [IQR]", "neuralode", "torchdiffeq", "notes"], rows)
    )
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def training_timings(device: torch.device, quick: bool, pairs: int) -> str:
    rows = []

    # MNIST ODE-Net: the same weights in both, neuralode's ODEBlock against torchdiffeq's block.
    torch.manual_seed(0)
    batch = 8 if quick else 128
    ours = build_classifier("odenet", tol=1e-3, adjoint=True).to(device)
    peer = copy.deepcopy(ours)
    peer.ode_block = TorchdiffeqAdjointBlock(peer.ode_block.func, 1e-3).to(device)
    x = torch.randn(batch, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def mnist_step(model: nn.Module) -> Callable[[], None]:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def run() -> None:
            model.ode_block.func.reset_nfe()
            loss = F.cross_entropy(model(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return _synced(run, device)

    step_ours, step_peer = mnist_step(ours), mnist_step(peer)
    timing = time_pair(step_ours, step_peer, pairs=pairs, warmup=2)
    step_ours()
    nfe_ours = ours.ode_block.func.nfe_forward + ours.ode_block.func.nfe_backward
    step_peer()
    nfe_peer = peer.ode_block.func.nfe_forward + peer.ode_block.func.nfe_backward
    rows.append(
        _ratio_row(
            f"MNIST ODE-Net training step, batch {batch}, dopri5 1e-3, adjoint",
            timing,
            f"NFE (F+B) {nfe_ours} / {nfe_peer}",
        )
    )

    # CNF: exact trace, adjoint; torchdiffeq with the seminorm as neuralode's adjoint uses by default.
    torch.manual_seed(0)
    batch = 32 if quick else 512
    model = build_cnf(2, hidden_dims=(64, 64, 64), rtol=1e-5, atol=1e-5, adjoint=True).to(device)
    centers = (
        torch.tensor([[math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)] for k in range(8)], device=device) * 2
    )
    xs = centers[torch.randint(0, 8, (batch,), device=device)] + 0.35 * torch.randn(batch, 2, device=device)
    params = tuple(model.dynamics.parameters())
    t = torch.tensor([0.0, model.T], device=device)

    def cnf_ours() -> None:
        model.dynamics.reset_nfe()
        (-model.log_prob(xs).mean()).backward()

    def cnf_peer() -> None:
        model.dynamics.reset_nfe()
        model.dynamics.reset_noise()
        z, dlogp = torchdiffeq.odeint_adjoint(
            model.dynamics,
            (xs, torch.zeros(batch, 1, device=device)),
            t,
            rtol=model.rtol,
            atol=model.atol,
            adjoint_params=params,
            adjoint_options={"norm": "seminorm"},
        )
        (-(standard_normal_logprob(z[-1]) - dlogp[-1, :, 0]).mean()).backward()

    ours_s, peer_s = _synced(cnf_ours, device), _synced(cnf_peer, device)
    timing = time_pair(ours_s, peer_s, pairs=pairs, warmup=2)
    ours_s()
    nfe_o = model.nfe_forward + model.nfe_backward
    peer_s()
    nfe_p = model.nfe_forward + model.nfe_backward  # torchdiffeq's backward calls count as forward ones
    rows.append(
        _ratio_row(
            f"CNF training step (exact trace), batch {batch}, dopri5 1e-5, adjoint",
            timing,
            f"NFE (F+B) {nfe_o} / {nfe_p}",
        )
    )
    return (
        "## 3. Training steps against torchdiffeq\n\n"
        "Fresh weights, random inputs (the timing is of the solver and autograd, not of learning). Eager only: "
        "the adjoint differentiates `func` inside its backward solve, where a CUDA-graph capture of `func` is "
        "not yet supported by neuralode (issue 14's `options={'compile': True}`).\n\n"
        + markdown_table(["case", "neuralode / torchdiffeq [IQR]", "neuralode", "torchdiffeq", "notes"], rows)
    )


# --------------------------------------------------------------------------------------------


def _device_line(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"Device: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
            f"torch {torch.__version__}, torchdiffeq {torchdiffeq.__version__}, python {platform.python_version()}."
        )
    return f"Device: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda", help="cuda (default), cuda:N, or cpu to exercise the script without a GPU"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 pairs per timing (a smoke run)")
    parser.add_argument("--pairs", type=int, default=10, help="alternating pairs per timing (default 10)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"markdown file to write (default {RESULTS_DIR / 'gpu.md'} on CUDA, "
        f"{RESULTS_DIR / 'gpu_check_cpu.md'} with --device cpu)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: skipped: no CUDA device here (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}, CUDA build {torch.version.cuda}). Run it on a machine with a GPU, "
            "or `--device cpu --quick` to exercise the code on the CPU."
        )
        return 0
    out = args.out or RESULTS_DIR / ("gpu.md" if device.type == "cuda" else "gpu_check_cpu.md")
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(1)
    pairs = 2 if args.quick else args.pairs
    start = time.perf_counter()
    sections = []
    text, ok = correctness(device, 8 if args.quick else 64)
    sections.append(text)
    print(f"correctness: {'all pass' if ok else 'FAILURES'} ({time.perf_counter() - start:.0f} s)", flush=True)
    sections.append(mlp_timings(device, args.quick, pairs, None if args.no_compile else "reduce-overhead"))
    print(f"MLP timings done ({time.perf_counter() - start:.0f} s)", flush=True)
    sections.append(training_timings(device, args.quick, pairs))
    total = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    title = "GPU check" + (
        f" (run on {device.type}" + (", --quick" if args.quick else "") + ")"
        if device.type != "cuda" or args.quick
        else ""
    )
    intro = (
        f"`python benchmarks/gpu_check.py{' --device ' + args.device if args.device != 'cuda' else ''}"
        f"{' --quick' if args.quick else ''}`: {total:.0f} s in all. Time ratios are medians of {pairs} alternating "
        "pairs in one process (< 1: neuralode is faster); each call ends with a device synchronisation."
    )
    out.write_text("\n\n".join([f"# {title}", intro, _device_line(device), machine_markdown(), *sections]) + "\n")
    print(f"wrote {out} ({total:.0f} s); correctness {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
