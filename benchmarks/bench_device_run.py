"""The device run (``options={"compile": True}`` on an adaptive solve without autograd) against the eager solve,
one compiled step per call (``compile_steps=1``) and diffrax, on workloads (b), (c) and (e) of ``bench_peers.py``,
and (e) with a clock per sample (``per_sample``: eager and the per-sample device run; diffrax's (e) is ``vmap``-ped,
so its clock is per sample too); and the fixed grid's compiled run (:mod:`neuralode.solvers.fast.grid_run`) on
workload (a), beside the compiled chunks it replaces without autograd (``fast.compiled_chunks``, which a solve
recording autograd still takes: timed here with autograd on and no parameter requiring grad, so no graph is
built).

Each line alternates the variants in one process (one thread for torch and XLA) and reports the median of the
per-pair ratios with its interquartile range, the NFE and the accepted / rejected steps. Compilation is
excluded from the timings and reported apart: the first call in this process (cold: inductor's start-up and an
empty cache for this graph, unless an earlier run of this script filled the on-disk cache) and the first call of
a second process started afterwards (warm: inductor's on-disk caches filled by this one).

Run from the repository root (needs the ``bench`` extra)::

    .venv/bin/python benchmarks/bench_device_run.py            # writes benchmarks/results/device_run.md
    .venv/bin/python benchmarks/bench_device_run.py --pairs 11 --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import benchmarks.bench_peers as peers  # noqa: E402  (sets up one-thread JAX before importing it)
import neuralode  # noqa: E402
from benchmarks.common import alternate, iqr_text, machine_markdown  # noqa: E402
from neuralode.solvers.methods import compiled  # noqa: E402

VARIANTS = {
    "eager": {},
    "compiled step (compile_steps=1)": {"compile": True, "compile_steps": 1},
    "device run (compile=True)": {"compile": True},
}
# On the MLP workloads, whose fields are tanh networks: the device run compiled with ATen's float32 tanh instead of
# the rational one (methods/fast_tanh.py), on a copy of the func (graphs are cached per func).
ATEN_TANH = {"device run, ATen tanh (FAST_TANH=False)": {"compile": True, "aten_tanh": True}}


BYPASSED: list[int] = []  # graphs AOT autograd's cache refused in each warm process

PER_SAMPLE = {
    "eager, per sample": {"per_sample": True},
    "device run, per sample": {"per_sample": True, "compile": True},
}


# Workload (a), a fixed grid: the compiled grid run with the default compile_steps and with the whole grid in one call,
# and the compiled chunks (autograd on).
FIXED = {
    "eager": {},
    "compiled step (compile_steps=1)": {"compile": True, "compile_steps": 1},
    "compiled chunks (compile_steps=32, autograd on)": {"compile": True, "grad": True},
    "grid run (compile=True)": {"compile": True},
    "grid run (compile_steps=200)": {"compile": True, "compile_steps": 200},
    "grid run, ATen matmul (SMALL_MATMUL=False)": {"compile": True, "aten_mm": True},
}


def setup(key: str):
    """``(func, y0, t, solve keywords, the bench_peers workload maker)`` of workload ``key`` (``p``: (e))."""
    if key == "a":  # bench_peers.tiny_midpoint's func and state
        torch.manual_seed(0)
        func = peers.MLPField([2, 16, 2])
        y0 = torch.randn(8, 2)
        return func, y0, torch.tensor([0.0, 1.0]), dict(method="midpoint"), peers.tiny_midpoint
    if key in ("b", "c"):
        method = "dopri5" if key == "b" else "tsit5"
        func, y0, t = peers._mlp_setup()
        return func, y0, t, dict(rtol=1e-6, atol=1e-6, method=method), lambda: peers.mlp_forward(method)
    torch.manual_seed(2)
    func = peers.VanDerPol()
    y0 = torch.rand(256, 2) * 4 - 2
    t = torch.linspace(0.0, 10.0, 200)
    return func, y0, t, dict(rtol=1e-5, atol=1e-5, method="dopri5"), peers.van_der_pol


@contextlib.contextmanager
def aten_ops(options: dict):
    """Compile with ATen's float32 tanh where ``options['aten_tanh']``, and inductor's own matrix products where
    ``options['aten_mm']`` (instead of methods/fast_tanh.py and methods/small_matmul.py), whatever the defaults."""
    saved = compiled.FAST_TANH, compiled.SMALL_MATMUL
    compiled.FAST_TANH = not options.get("aten_tanh", False)
    compiled.SMALL_MATMUL = not options.get("aten_mm", False)
    try:
        yield
    finally:
        compiled.FAST_TANH, compiled.SMALL_MATMUL = saved


def _aten_flags(options: dict) -> tuple[dict, dict]:
    """``(solve options, the aten_* flags)``."""
    flags = {k: options[k] for k in ("aten_tanh", "aten_mm") if k in options}
    return {k: v for k, v in options.items() if k not in flags}, flags


def solver(func, y0, t, kw, options):
    options = dict(options)
    grad = options.pop("grad", False)
    options, flags = _aten_flags(options)
    if flags:
        func = copy.deepcopy(func)  # graphs are cached per func
    if kw["method"] == "midpoint":
        options["step_size"] = 1.0 / 200
    if grad:
        # Autograd on and no graph built (no parameter requiring grad): the chunks' forward alone. A plain function
        # around the module, as the grid run takes a module under autograd and leaves plain functions to the chunks.
        func.requires_grad_(False)
        module = func

        def func(t, y):
            return module(t, y)

    def run():
        with torch.set_grad_enabled(grad), aten_ops(flags):
            return neuralode.solve(func, y0, t, options=options, **kw)

    return run


def variants(key: str) -> dict:
    return PER_SAMPLE if key == "p" else FIXED if key == "a" else VARIANTS | ATEN_TANH if key in "bc" else VARIANTS


def first_call(key: str, name: str | None = None) -> float:
    """Seconds of the first solve of workload ``key`` in this process, with the variant ``name`` (by default the
    device or grid run)."""
    if name is not None and name in GRADIENTS.get(key, {}):  # a training step: forward and backward
        step = gradient_setup(key)[name]
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    func, y0, t, kw, _ = setup(key)
    start = time.perf_counter()
    if name is None:
        name = next(n for n in variants(key) if n.startswith(("device run", "grid run")))
    solver(func, y0, t, kw, variants(key)[name])()
    return time.perf_counter() - start


def cold_first_call(key: str, name: str) -> float:
    """Seconds of the first solve of ``key`` with the variant ``name`` in a new process whose inductor cache is
    empty (a temporary ``TORCHINDUCTOR_CACHE_DIR``): inductor's start-up and the whole compilation."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run(
            [sys.executable, __file__, "--first-call", key, "--variant", name],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache},
        ).stdout.split()
    return float(out[-1])


def measure(key: str, pairs: int) -> list[str]:
    func, y0, t, kw, workload = setup(key)
    w = workload()
    fns = {name: solver(func, y0, t, kw, opts) for name, opts in variants(key).items()}
    eager = next(iter(fns))
    reference = fns[eager]()
    rows, cold = [], {}
    for name, fn in fns.items():
        start = time.perf_counter()
        sol = fn()
        cold[name] = time.perf_counter() - start
        dy = (sol.ys - reference.ys).abs().max().item()
        counts = [
            int(x.sum()) if isinstance(x, torch.Tensor) else x
            for x in (sol.stats.nfe, sol.stats.n_accepted, sol.stats.n_rejected)
        ]
        rows.append((name, *counts, dy))
    fns["diffrax"] = w.peers["diffrax"]
    times = alternate(fns, pairs)
    bypassed, warm_s = subprocess.run(
        [sys.executable, __file__, "--first-call", key], capture_output=True, text=True, check=True
    ).stdout.split()[-2:]
    warm = float(warm_s)
    BYPASSED.append(int(bypassed))
    lines = []
    for name, nfe, acc, rej, dy in rows:
        over_dfx = [a / b for a, b in zip(times[name], times["diffrax"])]
        over_eager = [a / b for a, b in zip(times[name], times[eager])]
        compile_cell = "–" if name == eager else f"{cold[name]:.1f} s"
        warm_cell = f"{warm:.1f} s" if name == next(n for n in fns if n.startswith(("device", "grid"))) else "–"
        lines.append(
            f"| ({'e' if key == 'p' else key}) | {name} | {iqr_text(over_dfx)} | {iqr_text(over_eager)} | "
            f"{statistics.median(times[name]) * 1e3:.2f} ms | {statistics.median(times['diffrax']) * 1e3:.2f} ms | "
            f"{nfe} ({acc} + {rej}) | {dy:.1e} | {compile_cell} | {warm_cell} |"
        )
    return lines


# Forward + backward of mean(ys²) (gradients of y0 and the weights): (d) is bench_peers' workload (MLP
# 32→128→128→32, batch 256, dopri5 1e-6, 10 outputs) against diffrax's default RecursiveCheckpointAdjoint; (t) the
# tiny MLP 2→16→2, batch 8, the same solve, where the evaluations are cheap and the loop's own work decides; (a) the
# tiny MLP on (a)'s grid (midpoint, 200 steps), backpropagation through the grid run. The first variant of each is
# the one the others are compared with.
GRADIENTS = {
    "d": {
        "adjoint": (neuralode.odeint_adjoint, {}),
        "backprop": (neuralode.odeint, {}),
        "backprop, compile=True (device run)": (neuralode.odeint, {"compile": True}),
        "adjoint, compile=True": (neuralode.odeint_adjoint, {"compile": True}),
        "adjoint, compile=True, ATen tanh": (neuralode.odeint_adjoint, {"compile": True, "aten_tanh": True}),
    },
    "a": {
        "backprop": (neuralode.odeint, {"step_size": 1.0 / 200}),
        "backprop, compile=True (grid run)": (neuralode.odeint, {"step_size": 1.0 / 200, "compile": True}),
        "backprop, compile=True (grid run), ATen matmul": (
            neuralode.odeint,
            {"step_size": 1.0 / 200, "compile": True, "aten_mm": True},
        ),
    },
}
GRADIENTS["t"] = {
    **{k: v for k, v in GRADIENTS["d"].items() if "ATen" not in k},
    "adjoint, compile=True, ATen matmul": (neuralode.odeint_adjoint, {"compile": True, "aten_mm": True}),
}
GRADIENTS["o"] = {
    "backprop": (neuralode.odeint, {"step_size": 0.25}),
    "backprop, compile=True (grid run)": (neuralode.odeint, {"step_size": 0.25, "compile": True}),
}


def gradient_setup(key: str):
    if key == "d":
        func, y0, t = peers._mlp_setup()
    elif key == "o":  # the MNIST ODE-Net's block on a batch of 32 of its (64, 6, 6) features, rk4 with 4 steps
        torch.manual_seed(0)
        from neuralode.models.classifiers import ConvODEFunc

        func, y0, t = ConvODEFunc(64), torch.randn(32, 64, 6, 6), torch.tensor([0.0, 1.0])
    else:
        torch.manual_seed(0)
        func, y0 = peers.MLPField([2, 16, 2]), torch.randn(8, 2)
        t = torch.tensor([0.0, 1.0]) if key == "a" else torch.linspace(0.0, 1.0, 10)
    method = {"a": "midpoint", "o": "rk4"}.get(key, "dopri5")
    y0g = y0.clone().requires_grad_(True)

    def step(solver, options):
        options, flags = _aten_flags(options)
        f = copy.deepcopy(func) if flags else func  # graphs are cached per func
        ps = list(f.parameters())

        def run():
            for x in (y0g, *ps):
                x.grad = None
            with aten_ops(flags):
                ys = solver(f, y0g, t, rtol=1e-6, atol=1e-6, method=method, options=options)
                ys.pow(2).mean().backward()
            return torch.cat([x.grad.reshape(-1) for x in (y0g, *ps)])

        return run

    return {name: step(solver, options) for name, (solver, options) in GRADIENTS[key].items()}


def measure_gradients(key: str, pairs: int) -> list[str]:
    fns = gradient_setup(key)
    base = next(iter(fns))
    reference = fns[base]()
    first, diffs = {}, {}
    for name, fn in fns.items():
        start = time.perf_counter()
        g = fn()
        first[name] = time.perf_counter() - start
        diffs[name] = ((g - reference).abs().max() / reference.abs().max()).item()
    if key == "d":
        fns["diffrax"] = peers.mlp_backward().peers["diffrax"]
    times = alternate(fns, pairs)
    lines = []
    for name in GRADIENTS[key]:
        over_dfx = iqr_text([a / b for a, b in zip(times[name], times["diffrax"])]) if key == "d" else "–"
        over_base = iqr_text([a / b for a, b in zip(times[name], times[base])])
        dfx_ms = f"{statistics.median(times['diffrax']) * 1e3:.2f} ms" if key == "d" else "–"
        lines.append(
            f"| ({key}) | {name} | {over_dfx} | {over_base} | {statistics.median(times[name]) * 1e3:.2f} ms | "
            f"{dfx_ms} | {diffs[name]:.1e} | {first[name]:.1f} s |"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=41)
    p.add_argument("--only", default="abcep", help="workload keys among a, b, c, e, p ((e) per sample)")
    p.add_argument(
        "--gradients",
        default="dtao",
        help="gradient workloads among d (bench_peers' (d)), t (tiny MLP), a (its grid), o (the ODE-Net block)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "device_run.md")
    p.add_argument("--first-call", dest="first_call", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.first_call:
        from torch._dynamo.utils import counters

        seconds = first_call(args.first_call, args.variant)
        print(f"{counters['aot_autograd']['autograd_cache_bypass']} {seconds:.3f}")
        return 0
    start = time.perf_counter()
    table = []
    for key in args.only:
        rows = measure(key, args.pairs)
        table += rows
        print("\n".join(rows), flush=True)
    gradient_rows = []
    for key in args.gradients:
        rows = measure_gradients(key, args.pairs)
        gradient_rows += rows
        print("\n".join(rows), flush=True)
    cold = []
    if "a" in args.only:
        for name in ("grid run (compile=True)", "compiled chunks (compile_steps=32, autograd on)"):
            cold.append(f"{name.split(' (')[0]} {cold_first_call('a', name):.1f} s")
        cold.append(
            f"a training step through the grid run (forward and backward) "
            f"{cold_first_call('a', 'backprop, compile=True (grid run)'):.1f} s"
        )
        print(cold, flush=True)
    text = [
        "# The device run: a solve's run of steps as one compiled graph",
        "",
        f"Generated by `python benchmarks/bench_device_run.py` in {time.perf_counter() - start:.0f} s; float32, "
        "`torch.no_grad()` (but the chunks' row), one thread (torch and XLA), inductor on the CPU. Workloads (a), (b), "
        "(c), (e) of `bench_peers.py` (same weights, states and tolerances; (a), a fixed grid, takes the grid run "
        "of `fast/grid_run.py`, the others the adaptive device run of `fast/device_run.py`). Ratios are medians of alternating pairs in one "
        f"process, interquartile range in brackets ({args.pairs} pairs); the millisecond columns are medians, "
        "for scale only. NFE: evaluations (accepted + rejected steps; per sample, summed over the samples). max |Δy|: "
        "against the eager solve (per sample: the eager per-sample solve). "
        "Compile: the first call in this process (cold, unless an earlier run filled inductor's on-disk "
        "cache) and the first call of a second process started afterwards (warm).",
        "",
        machine_markdown(),
        "",
        "| workload | neuralode | / diffrax [IQR] | / eager [IQR] | neuralode | diffrax | NFE | max abs Δy | "
        "first call | warm first call |",
        "| --- | --- | --: | --: | --: | --: | --: | --: | --: | --: |",
        *table,
        "",
        *(
            [
                "Gradients: forward + backward of mean(ys²), with respect to y0 and the weights, float32; (d) is "
                "`bench_peers.py`'s (d) (dopri5 at rtol = atol = 1e-6, 10 outputs on [0, 1]; diffrax: its default "
                "`RecursiveCheckpointAdjoint`), (t) the tiny MLP 2→16→2, batch 8, the same solve, (a) the tiny MLP "
                "on (a)'s grid (midpoint, 200 steps, outputs at 0 and 1), (o) the MNIST ODE-Net's block "
                "(`ConvODEFunc(64)`, an `ODEFunc`: the solver counts its evaluations for it) on a batch of 32 of its (64, 6, 6) features, "
                "rk4 with 4 steps. `adjoint, compile=True`: `odeint_adjoint` "
                "with `options={'compile': True}`, whose forward solve takes the device run and whose backward solves "
                "(one per output interval) take it too, their dynamics written with `torch.func.vjp` "
                "(`solvers/adjoint/traced.py`). `backprop, compile=True (device run)`: the device run records each "
                "accepted step's state and its backward pass is a compiled reverse run of each step's "
                "`torch.func.vjp` (`fast/backprop.py`). `backprop, compile=True (grid run)`: the grid run keeps every grid "
                "state and its backward pass is a compiled reverse run of each step's `torch.func.vjp`, which "
                "evaluates each step again (as `checkpoint=True` does): where the evaluations dominate the time, as "
                "in (o), that costs more than the loop's overhead saves. max rel "
                "Δgrad: the largest difference from the first row's gradient over its largest entry. First call: "
                "this process's first solve and backward pass with that variant.",
                "",
                "| workload | neuralode | / diffrax [IQR] | / first row [IQR] | neuralode | diffrax | "
                "max rel Δgrad | first call |",
                "| --- | --- | --: | --: | --: | --: | --: | --: |",
                *gradient_rows,
                "",
            ]
            if gradient_rows
            else []
        ),
        "Notes:",
        "",
        f"- The warm processes' first calls compile again: AOT autograd's cache refused {BYPASSED} graphs in them "
        '(torch 2.13 logs "Bypassing autograd cache due to: Unsupported call_function target while_loop"), and '
        "inductor's FX graph cache the same; what a second process reuses is inductor's compiled kernels.",
        *(
            [
                "- The first calls above may find kernels that an earlier run of this script left in inductor's "
                "on-disk cache. In a new process with an empty cache (a temporary `TORCHINDUCTOR_CACHE_DIR`), "
                f"(a)'s first call took: {', '.join(cold)}.",
                "- (a)'s chunks ran with autograd on and no parameter requiring grad (so no graph was built: their "
                "forward alone), the module wrapped in a plain function (the grid run takes a module under autograd, "
                "the chunks a plain function). The grid run's NFE counts each step's own first "
                "stage (one evaluation more than eager), the chunks' also their 7 padded steps.",
            ]
            if cold
            else []
        ),
        "- Every graph compiled with inductor evaluates a float32 `tanh` as the rational function of "
        "`solvers/methods/fast_tanh.py` (within 7 units in the last place; ATen's costs several times more, "
        "`tanh.md`); the rows marked ATen tanh compile with ATen's (`compiled.FAST_TANH = False`) on a copy of "
        "the func; likewise the rows marked ATen matmul compile inductor's own matrix products (`compiled.SMALL_MATMUL = "
        "False`) where the others decompose the small ones into generated loops (`solvers/methods/small_matmul.py`). "
        "On (b) and (c) the error estimates at rtol = atol = 1e-6 in float32 lie within a few units in "
        "the last place of the state, so a change of rounding can add a step (the NFE column).",
        "- Per sample in float32 the run's counts may differ from the eager per-sample solve's where rounding moves "
        "an error ratio across 1 (the NFE column); in float64 `tests/test_device_run.py` finds every sample's "
        "counts equal.",
        "",
    ]
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
