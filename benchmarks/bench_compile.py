"""``options={"compile": True}`` against the eager step, per workload.

Writes ``benchmarks/results/compile.md``.

    python benchmarks/bench_compile.py [--quick]

Same solve eager and compiled (inductor), alternating in one process, one thread; the ratio is
compiled / eager (< 1: compilation pays), with the first call's compile time reported apart.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import neuralode
from benchmarks.common import MLPField, fmt_ms, markdown_table, parse_args, setup, time_pair, write_markdown


def vdp(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, 2.0 * (1 - x**2) * v - x], -1)


def workloads():
    mlp = MLPField([2, 16, 2])
    big = MLPField([32, 128, 128, 32])
    return {
        "Van der Pol μ=2, batch 256, rk4, 200 fixed steps": (
            vdp, torch.randn(256, 2), torch.tensor([0.0, 10.0]), dict(method="rk4", options={"step_size": 0.05})),
        "Van der Pol μ=2, batch 256, dopri5 1e-5, 200 outputs": (
            vdp, torch.randn(256, 2), torch.linspace(0, 10, 200), dict(rtol=1e-5, atol=1e-5)),
        "MLP 2→16→2, batch 8, midpoint, 200 fixed steps": (
            mlp, torch.randn(8, 2), torch.tensor([0.0, 1.0]), dict(method="midpoint", options={"step_size": 0.005})),
        "MLP 32→128→128→32, batch 256, dopri5 1e-6, 10 outputs": (
            big, torch.randn(256, 32), torch.linspace(0, 1, 10), dict(rtol=1e-6, atol=1e-6)),
    }


def run(pairs: int) -> str:
    rows = []
    for name, (f, y0, t, kw) in workloads().items():
        opts = kw.pop("options", None) or {}
        # This table is of one compiled step per call; fixed grids' chunks are timed below.
        c_opts = {"compile": True, **({"compile_steps": 1} if "step_size" in opts else {})}
        with torch.no_grad():
            start = time.perf_counter()
            sol = neuralode.solve(f, y0, t, options={**opts, **c_opts}, **kw)
            first = time.perf_counter() - start
            eager = neuralode.solve(f, y0, t, options=opts or None, **kw)
            diff = float((sol.ys - eager.ys).abs().max())
            timing = time_pair(lambda: neuralode.solve(f, y0, t, options={**opts, **c_opts}, **kw),
                               lambda: neuralode.solve(f, y0, t, options=opts or None, **kw), pairs=pairs)
        rows.append([name, timing.ratio_text(), fmt_ms(timing.ours_s), fmt_ms(timing.peer_s),
                     f"{sol.stats.compile_s:.1f} s", f"{first:.1f} s", f"{diff:.1e}", f"{sol.stats.nfe}"])
        print(rows[-1], flush=True)
    return "## Compiled step vs eager step\n\n" + markdown_table(
        ["workload", "compiled / eager [IQR]", "compiled", "eager", "compile time", "first solve", "max |Δy|", "NFE"],
        rows,
    )


def _tiny_section(pairs: int) -> str:
    """Workload (a) of ``bench_peers.py``: eager, one compiled step per call, compiled chunks of
    ``compile_steps`` steps, and diffrax (jit-compiled, compile excluded), forward and with
    backpropagation."""
    import copy

    try:
        from benchmarks import bench_peers
    except SystemExit as exc:  # the bench extra (JAX, diffrax) is missing
        return f"## Workload (a) against diffrax\n\nSkipped: {exc}\n"
    from neuralode.solvers import compiled_chunks

    work = bench_peers.tiny_midpoint()  # builds the MLP and y0 from seed 0, and diffrax's jitted solve
    torch.manual_seed(0)
    func = MLPField([2, 16, 2])
    y0 = torch.randn(8, 2)
    t = torch.tensor([0.0, 1.0])
    assert torch.equal(y0, work.state), "the workload's initial state is rebuilt from its seed"
    base = {"step_size": 1.0 / 200}
    variants = {
        "eager": (func, base),
        "compiled step (compile_steps=1)": (copy.deepcopy(func), {**base, "compile": True, "compile_steps": 1}),
        "compiled chunks, K=32 (default)": (copy.deepcopy(func), {**base, "compile": True}),
        "compiled chunks, K=16": (copy.deepcopy(func), {**base, "compile": True, "compile_steps": 16}),
        "compiled chunks, K=50": (copy.deepcopy(func), {**base, "compile": True, "compile_steps": 50}),
        "compiled chunks, K=32, default inductor config": (copy.deepcopy(func), {**base, "compile": True}),
    }

    def forward(name):
        f, o = variants[name]
        with torch.no_grad():
            return neuralode.solve(f, y0, t, method="midpoint", options=o)

    eager_ys = forward("eager").ys
    assert torch.allclose(eager_ys, torch.as_tensor(work.answers["neuralode"], dtype=eager_ys.dtype))
    info = {}
    for name in variants:
        if name == "eager":
            continue
        saved = dict(compiled_chunks._CPU_INDUCTOR_OPTIONS)
        if name.endswith("default inductor config"):
            compiled_chunks._CPU_INDUCTOR_OPTIONS.clear()  # this variant's func compiles without them
        try:
            start = time.perf_counter()
            sol = forward(name)
            first = time.perf_counter() - start
        finally:
            compiled_chunks._CPU_INDUCTOR_OPTIONS.update(saved)
        info[name] = (sol.stats.compile_s, first, float((sol.ys - eager_ys).abs().max()), sol.stats.nfe)
    dfx = work.peers["diffrax"]
    rows = []
    for name in variants:
        for peer_name, peer in (("diffrax", dfx), ("eager", lambda: forward("eager"))):
            if name == peer_name:
                continue
            timing = time_pair(lambda n=name: forward(n), peer, pairs=pairs, per_side=True)
            c_s, first, diff, nfe = info.get(name, (0.0, 0.0, 0.0, forward("eager").stats.nfe))
            rows.append([name, peer_name, timing.ratio_text(), fmt_ms(timing.ours_s), fmt_ms(timing.peer_s),
                         f"{c_s:.1f} s" if c_s else "–", f"{diff:.1e}", str(nfe)])
            print(rows[-1], flush=True)

    # Backpropagation through the solve (a training step's forward and backward), chunked
    # against eager; the chunk's backward is compiled with it.
    def train(f, o):
        f.zero_grad()
        ys = neuralode.solve(f, y0, t, method="midpoint", options=o).ys
        ys[-1].pow(2).mean().backward()
        return [p.grad.clone() for p in f.parameters()]

    f_chunk = copy.deepcopy(func)
    o_chunk = {**base, "compile": True}
    start = time.perf_counter()
    g_chunk = train(f_chunk, o_chunk)
    first_train = time.perf_counter() - start
    g_eager = train(func, base)
    g_diff = max(float((a - b).abs().max()) for a, b in zip(g_chunk, g_eager))
    timing = time_pair(lambda: train(f_chunk, o_chunk), lambda: train(func, base), pairs=pairs, per_side=True)
    rows.append(["compiled chunks, K=32, forward + backward", "eager forward + backward", timing.ratio_text(),
                 fmt_ms(timing.ours_s), fmt_ms(timing.peer_s), f"{first_train:.1f} s (first step)",
                 f"{g_diff:.1e} (gradients)", "–"])
    print(rows[-1], flush=True)
    return (
        "## Workload (a) of bench_peers.py: MLP 2→16→2, batch 8, midpoint, 200 fixed steps\n\n"
        "Each row times one neuralode variant against diffrax (`jax.jit`, compile excluded, as in "
        "`peers.md`) or against the eager neuralode solve, alternating pairs, median ratio [IQR]. "
        "`compile time` is the first call's (paid once per function, K and state layout); max |Δy| is "
        "against the eager solve. NFE counts the padded steps of the last chunk and each step's own "
        "first stage. The default variant compiles on the CPU with `cpp_wrapper` and the CPP GEMM "
        "autotuning (`max_autotune`), scoped to that compilation; the `default inductor config` row "
        "compiles the same chunk without them. With autograd recording the chunk is always compiled with the default config (forward and backward graphs); its compile time is the first training step's.\n\n"
        + markdown_table(["neuralode variant", "against", "ratio [IQR]", "neuralode", "against",
                          "compile time", "max |Δy|", "NFE"], rows)
    )


def main(argv=None) -> Path:
    args = parse_args(__doc__.splitlines()[0], argv)
    setup()
    start = time.perf_counter()
    section = run(5 if args.quick else 15)
    tiny = _tiny_section(5 if args.quick else 15)
    intro = (
        f"Generated by `python benchmarks/bench_compile.py{' --quick' if args.quick else ''}` in "
        f"{time.perf_counter() - start:.0f} s, float32, `torch.no_grad()`, torch.compile(fullgraph=True) with "
        "the inductor backend on the CPU. Ratios of alternating pairs; the compile time is the first compiled "
        "call's, paid once per function, method and state layout."
    )
    md = write_markdown(args.out / "compile.md", "Compiled steps: options={'compile': True}", intro, [section, tiny])
    print(f"wrote {md}")
    return md


if __name__ == "__main__":
    main()
