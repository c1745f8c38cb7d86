"""``options={"compile": True}`` against the eager solve and against diffrax, per workload.

Writes ``benchmarks/results/compile.md``. Needs the ``bench`` extra (JAX, diffrax), as
``bench_peers.py`` does, whose workloads (a), (b), (c), (e) these are::

    python benchmarks/bench_compile.py [--quick]

Sections:

1. Adaptive steps, (b) (c) (e): one compiled step per call (stages, combination, error
   estimate), compiled with inductor's default configuration and with the CPU configuration the
   chunks use (``compiled.TUNE_STEP``), each against the eager solve and diffrax.
2. Workload (a), compiled chunks of ``compile_steps = K`` steps, one row per K. Each K runs in a
   process of its own with an empty inductor cache, so its compile time is what a user's first
   run pays (no autotuning result or graph inherited from another row).
3. Workload (a), the other variants: one compiled step per call, a chunk with inductor's default
   configuration, and a training step (forward and backward) through the chunks.

Every ratio is of alternating pairs in one process, one thread each, median [IQR].
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.jax_env import one_thread  # noqa: E402

one_thread()  # before jax and torch are imported
_FRESH_CACHE = None
if __name__ == "__main__" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    # An empty inductor cache for this run (and its own for each --k-row process, see k_section),
    # so compile times do not depend on what an earlier run left on disk.
    _FRESH_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="neuralode_inductor_")

import torch  # noqa: E402

import neuralode  # noqa: E402
from benchmarks.common import MLPField, fmt_ms, markdown_table, parse_args, setup, time_pair, write_markdown  # noqa: E402
from neuralode.solvers.fast import compiled, compiled_chunks  # noqa: E402

K_VALUES = (32, 50, 64, 100, 200)


def _peers():
    try:
        from benchmarks import bench_peers
    except SystemExit as exc:  # the bench extra (JAX, diffrax) is missing
        raise SystemExit(f"bench_compile needs the bench extra: {exc}") from None
    return bench_peers


def _copy(module):
    import copy

    return copy.deepcopy(module)


# --------------------------------------------------------------------------------------------
# 1. Adaptive steps.


def _adaptive_workloads(bp):
    """(name, workload, func, y0, t, solve keywords), rebuilt from bench_peers' seeds."""
    out = []
    for method in ("dopri5", "tsit5"):
        w = bp.mlp_forward(method)
        func, y0, t = bp._mlp_setup()
        out.append((w.title, w, func, y0, t, dict(rtol=1e-6, atol=1e-6, method=method)))
    w = bp.van_der_pol()
    torch.manual_seed(2)
    y0 = torch.rand(256, 2) * 4 - 2
    out.append(
        (w.title, w, bp.VanDerPol(), y0, torch.linspace(0.0, 10.0, 200), dict(rtol=1e-5, atol=1e-5, method="dopri5"))
    )
    for _, w, _, y0, _, _ in out:
        assert torch.equal(y0, w.state), "the workload's initial state is rebuilt from its seed"
    return out


def adaptive_section(bp, pairs: int) -> str:
    rows = []
    for title, w, func, y0, t, kw in _adaptive_workloads(bp):

        def solve(f, opts=None):
            with torch.no_grad():
                return neuralode.solve(f, y0, t, options=opts, **kw)

        eager_ys = solve(func).ys
        variants = {"eager": (func, None, None)}
        for name, tune in (("compiled step", False), ("compiled step, CPU config", True)):
            f = _copy(func)
            compiled.TUNE_STEP = tune
            try:
                start = time.perf_counter()
                sol = solve(f, {"compile": True})
                first = time.perf_counter() - start
            finally:
                compiled.TUNE_STEP = False
            variants[name] = (
                f,
                {"compile": True},
                (sol.stats.compile_s, first, float((sol.ys - eager_ys).abs().max()), sol.stats.nfe),
            )
        dfx = w.peers["diffrax"]
        for name, (f, opts, info) in variants.items():
            for peer_name, peer in (("diffrax", dfx), ("eager", lambda: solve(func))):
                if peer_name == name:
                    continue
                timing = time_pair(lambda f=f, o=opts: solve(f, o), peer, pairs=pairs, per_side=True)
                c_s, first, diff, nfe = info or (None, None, 0.0, solve(func).stats.nfe)
                rows.append(
                    [
                        title.split(" ")[0],
                        name,
                        peer_name,
                        timing.ratio_text(),
                        fmt_ms(timing.ours_s),
                        fmt_ms(timing.peer_s),
                        f"{c_s:.1f} s" if c_s else "–",
                        f"{diff:.1e}",
                        str(nfe),
                    ]
                )
                print(rows[-1], flush=True)
    return (
        "## Adaptive steps: one compiled step per call\n\n"
        "Workloads (b), (c), (e) of `bench_peers.py` (same weights, states and tolerances). `compiled step` is inductor's default configuration; "
        "`CPU config` adds `cpp_wrapper` and the CPP GEMM autotuning (`max_autotune`) that the chunks use, "
        "scoped to the compilation (`compiled.TUNE_STEP`). diffrax is jit-compiled, compile excluded. "
        "The compile time is the first call's in this process, so it depends on the order: the first "
        "compiled row also pays inductor's one-time start-up (its compile workers, the C++ toolchain), "
        "later rows reuse what earlier ones built; max |Δy| is against the eager solve.\n\n"
        + markdown_table(
            [
                "workload",
                "neuralode variant",
                "against",
                "ratio [IQR]",
                "neuralode",
                "against",
                "compile time",
                "max |Δy|",
                "NFE",
            ],
            rows,
        )
    )


# --------------------------------------------------------------------------------------------
# 2. Workload (a) per compile_steps K, each in a fresh process.


def _tiny(bp):
    work = bp.tiny_midpoint()  # builds the MLP and y0 from seed 0, and diffrax's jitted solve
    torch.manual_seed(0)
    func = MLPField([2, 16, 2])
    y0 = torch.randn(8, 2)
    assert torch.equal(y0, work.state), "the workload's initial state is rebuilt from its seed"
    return work, func, y0, torch.tensor([0.0, 1.0])


def k_row(k: int, pairs: int) -> dict:
    """Workload (a) with ``compile_steps=k`` in this (fresh) process: cold compile time, NFE,
    ratios against diffrax and eager, and the cost of the compiled calls themselves."""
    bp = _peers()
    work, func, y0, t = _tiny(bp)
    base = {"step_size": 1.0 / 200}
    opts = {**base, "compile": True, "compile_steps": k}

    def solve(o=opts):
        with torch.no_grad():
            return neuralode.solve(func, y0, t, method="midpoint", options=o)

    start = time.perf_counter()
    sol = solve()
    first = time.perf_counter() - start
    eager = solve(base)
    n_steps = 200
    size = compiled_chunks.chunk_size(n_steps, k)
    n_calls = -(-n_steps // size)
    vs_dfx = time_pair(solve, work.peers["diffrax"], pairs=pairs, per_side=True)
    vs_eager = time_pair(solve, lambda: solve(base), pairs=pairs, per_side=True)
    # The price of one compiled call beyond its kernels: a graph of the chunk's signature that
    # only scales the state, called as often as the solve calls its chunk, against the solve.
    ts = torch.zeros(size, 2)  # midpoint: two stage times per step
    hs = torch.zeros(size, dtype=torch.float64)
    trivial = compiled.compile_graph(lambda ts, hs, y: y * 1.0, "inductor", y0.device, False)

    def calls():
        y = y0
        for _ in range(n_calls):
            y = trivial(ts, hs, y)

    with torch.no_grad():
        calls()
        overhead = time_pair(calls, solve, pairs=pairs, per_side=True)
    return {
        "k": k,
        "size": size,
        "calls": n_calls,
        "compile_s": sol.stats.compile_s,
        "first_s": first,
        "nfe": sol.stats.nfe,
        "dy": float((sol.ys - eager.ys).abs().max()),
        "vs_dfx": vs_dfx.ratio_text(),
        "ours_ms": vs_dfx.ours_s * 1e3,
        "dfx_ms": vs_dfx.peer_s * 1e3,
        "vs_eager": vs_eager.ratio_text(),
        "call_us": overhead.ours_s / n_calls * 1e6,
        "call_share": overhead.ratio,
    }


def k_section(pairs: int, quick: bool) -> str:
    rows = []
    done: dict[int, tuple[int, list]] = {}  # chunk size -> (K, row): K values that compile the same graph
    for k in K_VALUES:
        size = compiled_chunks.chunk_size(200, k)
        if size in done:
            k_first, row = done[size]
            rows.append([str(k)] + row[1:-1] + [f"{row[-1]} (the graph of K = {k_first})"])
            continue
        cache = tempfile.mkdtemp(prefix="neuralode_inductor_")
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}  # a cold start for this K
        cmd = [sys.executable, str(Path(__file__).resolve()), "--k-row", str(k)] + (["--quick"] if quick else [])
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"bench_compile --k-row {k} failed:\n{exc.stderr[-3000:]}") from None
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        r = json.loads([line for line in out.splitlines() if line.startswith("KROW ")][-1][5:])
        default = " (default)" if k == compiled_chunks.DEFAULT_STEPS else ""
        rows.append(
            [
                f"{k}{default}",
                f"{r['calls']} × {r['size']}",
                str(r["nfe"]),
                f"{r['compile_s']:.1f} s",
                r["vs_dfx"],
                r["vs_eager"],
                f"{r['ours_ms']:.2f} ms",
                f"{r['dfx_ms']:.3f} ms",
                f"{r['call_us']:.0f} µs ({r['call_share']:.0%})",
                f"{r['dy']:.1e}",
            ]
        )
        done[size] = (k, rows[-1])
        print(rows[-1], flush=True)
    return (
        "## Workload (a), MLP 2→16→2, batch 8, midpoint, 200 fixed steps: compiled chunks per K\n\n"
        "`compile_steps = K` is the largest chunk; the chunk size is the largest that keeps "
        "`ceil(200 / K)` calls and divides 200, else the smallest with those calls "
        "(`compiled_chunks.chunk_size`). Each row ran in a fresh process with an empty inductor cache: "
        "the compile time is a first run's (CPU config: `cpp_wrapper`, CPP GEMM autotuning). NFE counts "
        "each step's own first stage and the padded steps. `per call` is the time of as many calls of a "
        "trivial compiled graph of the chunk's signature (guards, wrappers, argument and output "
        "handling, no arithmetic) and its share of the solve's time. diffrax is jit-compiled, compile "
        "excluded.\n\n"
        + markdown_table(
            [
                "K",
                "calls × steps",
                "NFE",
                "compile time",
                "/ diffrax [IQR]",
                "/ eager [IQR]",
                "neuralode",
                "diffrax",
                "per call (share of solve)",
                "max |Δy|",
            ],
            rows,
        )
    )


# --------------------------------------------------------------------------------------------
# 3. Workload (a), other variants.


def tiny_section(bp, pairs: int) -> str:
    work, func, y0, t = _tiny(bp)
    base = {"step_size": 1.0 / 200}
    k = compiled_chunks.DEFAULT_STEPS
    variants = {
        "eager": (func, base),
        "compiled step (compile_steps=1)": (_copy(func), {**base, "compile": True, "compile_steps": 1}),
        f"compiled chunks, K={k}, default inductor config": (_copy(func), {**base, "compile": True}),
    }

    def forward(name):
        f, o = variants[name]
        with torch.no_grad():
            return neuralode.solve(f, y0, t, method="midpoint", options=o)

    eager_ys = forward("eager").ys
    info = {}
    for name in variants:
        if name == "eager":
            continue
        saved = dict(compiled.CPU_INDUCTOR_OPTIONS)
        if name.endswith("default inductor config"):
            compiled.CPU_INDUCTOR_OPTIONS.clear()  # this variant's func compiles without them
        try:
            start = time.perf_counter()
            sol = forward(name)
            first = time.perf_counter() - start
        finally:
            compiled.CPU_INDUCTOR_OPTIONS.update(saved)
        info[name] = (sol.stats.compile_s, first, float((sol.ys - eager_ys).abs().max()), sol.stats.nfe)
    rows = []
    for name in variants:
        for peer_name, peer in (("diffrax", work.peers["diffrax"]), ("eager", lambda: forward("eager"))):
            if name == peer_name:
                continue
            timing = time_pair(lambda n=name: forward(n), peer, pairs=pairs, per_side=True)
            c_s, first, diff, nfe = info.get(name, (0.0, 0.0, 0.0, forward("eager").stats.nfe))
            rows.append(
                [
                    name,
                    peer_name,
                    timing.ratio_text(),
                    fmt_ms(timing.ours_s),
                    fmt_ms(timing.peer_s),
                    f"{c_s:.1f} s" if c_s else "–",
                    f"{diff:.1e}",
                    str(nfe),
                ]
            )
            print(rows[-1], flush=True)

    # Backpropagation through the solve (a training step's forward and backward), chunked
    # against eager; the chunk's backward is compiled with it, with inductor's defaults.
    def train(f, o):
        f.zero_grad()
        ys = neuralode.solve(f, y0, t, method="midpoint", options=o).ys
        ys[-1].pow(2).mean().backward()
        return [p.grad.clone() for p in f.parameters()]

    f_chunk = _copy(func)
    o_chunk = {**base, "compile": True}
    start = time.perf_counter()
    g_chunk = train(f_chunk, o_chunk)
    first_train = time.perf_counter() - start
    g_eager = train(func, base)
    g_diff = max(float((a - b).abs().max()) for a, b in zip(g_chunk, g_eager))
    timing = time_pair(lambda: train(f_chunk, o_chunk), lambda: train(func, base), pairs=pairs, per_side=True)
    rows.append(
        [
            f"compiled chunks, K={k}, forward + backward",
            "eager forward + backward",
            timing.ratio_text(),
            fmt_ms(timing.ours_s),
            fmt_ms(timing.peer_s),
            f"{first_train:.1f} s (first step)",
            f"{g_diff:.1e} (gradients)",
            "–",
        ]
    )
    print(rows[-1], flush=True)
    return (
        "## Workload (a): one compiled step per call, the default inductor config, and training\n\n"
        "In one process (compile times are first calls here; the rows share inductor's caches). The "
        "`default inductor config` row compiles the default chunk without `cpp_wrapper` and the GEMM "
        "autotuning. With autograd recording the chunk is always compiled with the default config "
        "(forward and backward graphs); its compile time is the first training step's.\n\n"
        + markdown_table(
            ["neuralode variant", "against", "ratio [IQR]", "neuralode", "against", "compile time", "max |Δy|", "NFE"],
            rows,
        )
    )


def main(argv=None) -> Path | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    k_only = None
    if "--k-row" in argv:
        i = argv.index("--k-row")
        k_only = int(argv[i + 1])
        del argv[i : i + 2]
    args = parse_args(__doc__.splitlines()[0], argv)
    setup()
    pairs = 5 if args.quick else 15
    if k_only is not None:
        print("KROW " + json.dumps(k_row(k_only, pairs)), flush=True)
        return None
    start = time.perf_counter()
    bp = _peers()
    sections: list[str] = []
    md = None
    try:
        # The chunks of (a) first: their cold compiles are most of the run. The file is rewritten
        # after each section, so an interrupted run keeps what it measured.
        for section in (
            lambda: k_section(pairs, args.quick),
            lambda: adaptive_section(bp, pairs),
            lambda: tiny_section(bp, pairs),
        ):
            sections.append(section())
            intro = (
                f"Generated by `python benchmarks/bench_compile.py{' --quick' if args.quick else ''}` in "
                f"{time.perf_counter() - start:.0f} s, float32, `torch.no_grad()` unless training, "
                "torch.compile(fullgraph=True) with the inductor backend on the CPU, one thread (torch and XLA). "
                "Ratios of alternating pairs, median [IQR]; compile times are reported apart (paid once per "
                "function, method, K and state layout; inductor's on-disk cache shortens later processes' "
                "compiles)."
            )
            md = write_markdown(args.out / "compile.md", "Compiled steps: options={'compile': True}", intro, sections)
            print(f"wrote {md}", flush=True)
    finally:
        if _FRESH_CACHE is not None:
            shutil.rmtree(_FRESH_CACHE, ignore_errors=True)
    return md


if __name__ == "__main__":
    main()
