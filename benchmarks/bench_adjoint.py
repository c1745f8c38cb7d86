"""The adjoint method against torchdiffeq: time, evaluations and memory kept for backward.

Writes ``benchmarks/results/adjoint.md`` and ``benchmarks/results/adjoint_memory.png``.

    python benchmarks/bench_adjoint.py [--quick]

Sections (targets from the adjoint issue):

1. MLP 32→128→128→32, batch 256, dopri5 at 1e-6: forward + adjoint backward (target ≤ 0.6×).
2. The paper's ODE-Net MNIST block, ConvODEFunc(64) on (64, 64, 6, 6), dopri5 at 1e-3 (target ≤ 0.9×).
3. Memory kept for backward by fixed-step rk4 with 10, 100, 1000 steps: backprop, adjoint, checkpointing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torchdiffeq
from torch import nn

import neuralode
from benchmarks.common import (
    CountNFE,
    MLPField,
    SavedBytes,
    fmt_bytes,
    fmt_ms,
    markdown_table,
    measure_saved_bytes,
    parse_args,
    setup,
    time_pair,
    write_markdown,
    zero_grads,
)
from neuralode.models import ConvODEFunc

ADJOINTS = {"neuralode": neuralode.odeint_adjoint, "torchdiffeq": torchdiffeq.odeint_adjoint}
HEADERS = [
    "case",
    "time ratio ours/peer [IQR]",
    "target",
    "ours",
    "torchdiffeq",
    "NFE ours fwd + bwd",
    "NFE torchdiffeq fwd + bwd",
    "grad error ours",
    "grad error torchdiffeq",
    "reference spread",
]
# Tolerance of the reference gradients (float32 states: tighter buys nothing).
REF_TOL = 1e-7


def _gradients(func: nn.Module, y0: torch.Tensor) -> list[torch.Tensor]:
    out = [y0.grad.clone()] + [p.grad.clone() for p in func.parameters()]
    zero_grads(func, y0)
    return out


def _adjoint_pass(lib: str, func: nn.Module, y0: torch.Tensor, t: torch.Tensor, loss_fn, **kw):
    """(forward NFE, backward NFE, gradients) of one forward + adjoint backward pass."""
    zero_grads(func, y0)
    counter = CountNFE(func)
    ys = ADJOINTS[lib](counter, y0, t, **kw)
    forward = counter.nfe
    loss_fn(ys).backward()
    return forward, counter.nfe - forward, _gradients(func, y0)


def _gradient_error(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Largest relative error ``|g - g_ref| / |g_ref|`` over y0's and each parameter's gradient."""
    return max(float((g - r).norm() / r.norm()) for g, r in zip(grads, reference))


def _adjoint_case(
    label: str, func: nn.Module, y0: torch.Tensor, t: torch.Tensor, loss_fn, target: float, pairs: int, **kw
):
    """Time, count and check one forward + adjoint backward pass of each library on the same module and input."""

    def train_step(lib: str):
        def run():
            zero_grads(func, y0)
            loss_fn(ADJOINTS[lib](func, y0, t, **kw)).backward()

        return run

    timing = time_pair(train_step("neuralode"), train_step("torchdiffeq"), pairs=pairs, warmup=2)
    passes = {lib: _adjoint_pass(lib, func, y0, t, loss_fn, **kw) for lib in ADJOINTS}
    # Cross-check the wrapper's count with neuralode's own statistics.
    sol = neuralode.solve_adjoint(func, y0, t, **kw)
    loss_fn(sol.ys).backward()
    zero_grads(func, y0)
    own = (sol.stats.nfe, sol.adjoint_stats.nfe)
    assert own == passes["neuralode"][:2], f"NFE mismatch: wrapper {passes['neuralode'][:2]} vs stats {own}"
    # Reference gradients: the peer's backprop through a tight solve (independent of our code); ours
    # at the same tolerance shows how far the reference itself can be trusted.
    tight = {}
    for lib, solver in (("torchdiffeq", torchdiffeq.odeint), ("neuralode", neuralode.odeint)):
        zero_grads(func, y0)
        loss_fn(solver(func, y0, t, method=kw["method"], rtol=REF_TOL, atol=REF_TOL)).backward()
        tight[lib] = _gradients(func, y0)
    reference = tight["torchdiffeq"]
    verdict = "yes" if timing.ratio <= target else "**no**"
    cells = [label, timing.ratio_text(), f"≤ {target}× : {verdict}", fmt_ms(timing.ours_s), fmt_ms(timing.peer_s)]
    for lib in ADJOINTS:
        forward, backward, grads = passes[lib]
        cells.append(f"{forward} + {backward} = {forward + backward}")
    for lib in ADJOINTS:
        cells.append(f"{_gradient_error(passes[lib][2], reference):.2g}")
    cells.append(f"{_gradient_error(tight['neuralode'], reference):.2g}")
    return cells


def mlp_adjoint(pairs: int) -> str:
    func = MLPField([32, 128, 128, 32])
    y0 = torch.randn(256, 32, requires_grad=True)  # (batch, 32)
    t = torch.linspace(0.0, 1.0, 10)
    row = _adjoint_case(
        "MLP 32→128→128→32, batch 256, dopri5 1e-6, 10 output times",
        func,
        y0,
        t,
        lambda ys: ys.pow(2).mean(),
        0.6,
        pairs,
        rtol=1e-6,
        atol=1e-6,
        method="dopri5",
    )
    return (
        "## 1. MLP dynamics: forward + adjoint backward\n\n"
        "tanh, float32, rtol=atol=1e-6, t = linspace(0, 1, 10), loss = mean(ys²), gradients with respect to "
        "y0 and the parameters. Both libraries with their defaults: the backward solve uses the forward's "
        "method and tolerances; neuralode's error norm leaves the parameter-gradient quadratures out "
        "(seminorm, its default), torchdiffeq's includes them (its default).\n\n" + markdown_table(HEADERS, [row])
    )


def odenet_adjoint(pairs: int) -> str:
    func = ConvODEFunc(64)  # one instance for both libraries: identical weights
    generator = torch.Generator().manual_seed(1)
    y0 = torch.randn(64, 64, 6, 6, generator=generator).requires_grad_(True)  # (batch, channels, 6, 6)
    weight = torch.randn(64, 64, 6, 6, generator=generator)
    t = torch.tensor([0.0, 1.0])
    row = _adjoint_case(
        "ConvODEFunc(64), input (64, 64, 6, 6), dopri5 1e-3, t=[0,1]",
        func,
        y0,
        t,
        lambda ys: (ys[-1] * weight).mean(),
        0.9,
        pairs,
        rtol=1e-3,
        atol=1e-3,
        method="dopri5",
    )
    return (
        "## 2. ODE-Net MNIST block: forward + adjoint backward\n\n"
        "The paper's ODE-Net dynamics (group norm, ReLU, two 3×3 convolutions with a time channel), 64 "
        "channels on the 6×6 feature map, batch 64, float32, rtol=atol=1e-3, t = [0, 1]; one module "
        "instance serves both libraries, fixed random input, loss = mean(y(1) · w) with a fixed random w.\n\n"
        + markdown_table(HEADERS, [row])
    )


# --------------------------------------------------------------------------------------------
# 3. Memory.

MEMORY_STEPS = (10, 100, 1000)


def _has_checkpoint() -> bool:
    kind = neuralode.FixedOptions  # KEYS since the options by concern; one flat field per key before
    return "checkpoint" in getattr(kind, "KEYS", {f.name for f in fields(kind)})


def _memory_modes() -> dict[str, callable]:
    modes = {
        "neuralode backprop": lambda f, y0, t, o: neuralode.odeint(f, y0, t, method="rk4", options=o),
        "neuralode adjoint": lambda f, y0, t, o: neuralode.odeint_adjoint(f, y0, t, method="rk4", options=o),
    }
    if _has_checkpoint():
        modes["neuralode checkpoint"] = lambda f, y0, t, o: neuralode.odeint(
            f, y0, t, method="rk4", options={**o, "checkpoint": True}
        )
    # torchdiffeq's `rk4` is the 3/8 rule: same number of stages, same memory pattern.
    modes["torchdiffeq backprop"] = lambda f, y0, t, o: torchdiffeq.odeint(f, y0, t, method="rk4", options=o)
    modes["torchdiffeq adjoint"] = lambda f, y0, t, o: torchdiffeq.odeint_adjoint(f, y0, t, method="rk4", options=o)
    return modes


def memory(out: Path) -> str:
    func = MLPField([16, 64, 16])
    y0 = torch.randn(64, 16, requires_grad=True)  # (batch, 16)
    t = torch.tensor([0.0, 1.0])
    results: dict[str, dict[int, SavedBytes]] = {}
    for mode, integrate in _memory_modes().items():
        results[mode] = {}
        for n in MEMORY_STEPS:
            zero_grads(func, y0)
            results[mode][n] = measure_saved_bytes(lambda: integrate(func, y0, t, {"step_size": 1.0 / n}).pow(2).mean())
    zero_grads(func, y0)

    rows = []
    for mode, by_steps in results.items():
        rows.append(
            [mode]
            + [fmt_bytes(by_steps[n].peak_distinct) for n in MEMORY_STEPS]
            + [f"{by_steps[MEMORY_STEPS[-1]].peak_distinct / by_steps[MEMORY_STEPS[0]].peak_distinct:.3g}×"]
            + [fmt_bytes(by_steps[n].packed_total) for n in MEMORY_STEPS]
        )
    table = markdown_table(
        ["mode"]
        + [f"peak, {n} steps" for n in MEMORY_STEPS]
        + [f"growth {MEMORY_STEPS[-1]}/{MEMORY_STEPS[0]}"]
        + [f"packed total, {n} steps" for n in MEMORY_STEPS],
        rows,
    )
    _plot_memory(results, out / "adjoint_memory.png")

    per_step = results["neuralode backprop"][MEMORY_STEPS[-1]].peak_distinct / MEMORY_STEPS[-1]
    if _has_checkpoint():
        checkpoint_note = (
            "`neuralode checkpoint` is `odeint(..., options={'checkpoint': True})`: backprop that keeps only each "
            "step's input state and recomputes the step's stages during backward. Its column counts what is kept "
            "through the forward pass; the activations of the one step being recomputed are held by "
            "`torch.utils.checkpoint`'s own hooks, which these hooks do not see: add about one step of backprop "
            f"(≈ {fmt_bytes(per_step)}) to its peak."
        )
    else:
        checkpoint_note = (
            "Gradient checkpointing is not measured: `neuralode.FixedOptions` has no `checkpoint` field in this "
            "version, so the mode does not exist."
        )
    return "\n\n".join(
        [
            "## 3. Memory kept for backward",
            "Fixed-step `rk4`, t = [0, 1], step_size = 1/steps, MLP 16→64→16 (tanh), batch 64, float32, "
            "loss = mean(y²), gradients with respect to y0 and the parameters. Measured with "
            "`torch.autograd.graph.saved_tensors_hooks` over forward and backward: *peak* is the most bytes of "
            "packed tensors alive at once (a tensor counts from when autograd packs it until the graph node holding "
            "it is freed; a storage region packed several times, like a weight saved by every evaluation, counts "
            "once); *packed total* is the plain sum of `numel × element_size` over every packed tensor, repeats "
            "included. The adjoint's peak includes one vector-Jacobian product's graph during the backward solve.",
            table,
            checkpoint_note,
            "Plot: `adjoint_memory.png` (peak, log-log).",
        ]
    )


def _plot_memory(results: dict[str, dict[int, SavedBytes]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for mode, by_steps in results.items():
        # torchdiffeq's curves coincide with neuralode's for backprop and adjoint: draw them as hollow
        # markers on dashed lines over neuralode's large filled ones so that both stay visible.
        if mode.startswith("torchdiffeq"):
            style = dict(linestyle="--", marker="s", markersize=5, markerfacecolor="none", linewidth=1.2)
        else:
            style = dict(linestyle="-", marker="o", markersize=9, linewidth=2.5, alpha=0.8)
        ax.loglog(MEMORY_STEPS, [by_steps[n].peak_distinct for n in MEMORY_STEPS], label=mode, **style)
    ax.set_xlabel("rk4 steps")
    ax.set_ylabel("peak bytes saved for backward")
    ax.set_title("Memory kept for backward: MLP 16→64→16, batch 64")
    ax.set_xticks(MEMORY_STEPS, [str(n) for n in MEMORY_STEPS])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------


def main(argv=None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    setup()
    start = time.perf_counter()
    sections = []
    for name, bench in [
        ("MLP adjoint", lambda: mlp_adjoint(6 if args.quick else 20)),
        ("ODE-Net adjoint", lambda: odenet_adjoint(3 if args.quick else 10)),
        ("memory", lambda: memory(args.out)),
    ]:
        t0 = time.perf_counter()
        sections.append(bench())
        print(sections[-1] + "\n", flush=True)
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]\n", flush=True)
    intro = (
        "Generated by `python benchmarks/bench_adjoint.py" + (" --quick" if args.quick else "") + f"` in "
        f"{time.perf_counter() - start:.0f} s. Times are ratios neuralode/torchdiffeq measured alternately in one "
        "process after warm-up: the median of per-pair ratios, with the interquartile range in brackets; the "
        "median absolute times are given for scale only. NFE: forward evaluations + backward (adjoint) "
        "evaluations, counted by a wrapper around the dynamics. Grad error: the largest relative error "
        "|g − g_ref| / |g_ref| over the gradients with respect to y0 and each parameter tensor, where g_ref is "
        f"torchdiffeq's backpropagation through a dopri5 solve at rtol = atol = {REF_TOL:g}; reference spread: "
        "the same measure for neuralode's backpropagation at that tolerance against g_ref (float32 limits how "
        "well the reference is known)."
    )
    md = write_markdown(args.out / "adjoint.md", "Adjoint benchmarks: neuralode vs torchdiffeq", intro, sections)
    print(f"wrote {md} and {args.out / 'adjoint_memory.png'}")
    return [md, args.out / "adjoint_memory.png"]


if __name__ == "__main__":
    main()
