"""This working tree's neuralode against an earlier revision of itself, in one process.

A refactor that must not cost speed is measured here: the workloads of ``bench_solvers.py`` (sections 1-3)
and of ``bench_peers.py`` (neuralode's side of (a)-(e)), plus the per-sample clock and a stiff solve, each
timed as alternating pairs of this tree's solve and the base revision's, one thread. The base revision's
``src/neuralode`` is exported with ``git archive`` and imported under another name (``neuralode_base``;
the package imports itself only relatively), so both run side by side with the same torch, the same
inputs and the same warm caches.

    python benchmarks/compare_revisions.py --base REV [--quick] [--pairs N]

Prints, and writes to ``benchmarks/results/revisions.md``, the median of the per-pair time ratios
new / base with the interquartile range, and both NFE (which must be equal for a refactor).
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import neuralode
from benchmarks.common import (
    CountNFE,
    MLPField,
    markdown_table,
    parse_args,
    setup,
    time_pair,
    write_markdown,
    zero_grads,
)

ROOT = Path(__file__).resolve().parents[1]


def load_base(rev: str, into: Path):
    """Import ``src/neuralode`` of git revision ``rev`` as the package ``neuralode_base``."""
    archive = subprocess.run(["git", "archive", rev, "src/neuralode"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "src" / "neuralode").rename(into / "neuralode_base")
    sys.path.insert(0, str(into))
    return importlib.import_module("neuralode_base")


def workloads(new, base):
    """``(name, make(lib) -> callable, count(lib) -> nfe)`` for each workload; ``lib`` is a package."""
    out = []

    def add(name, make, nfe):
        out.append((name, make, nfe))

    def counted(lib, func, y0, t, **kw):
        c = CountNFE(func)
        with torch.no_grad():
            lib.odeint(c, y0, t, **kw)
        return c.nfe

    # bench_solvers 1: per-step overhead, rk4 / rk4_38 on a fixed grid.
    tiny = MLPField([2, 16, 2])
    y8 = torch.randn(8, 2)
    for method in ("rk4", "rk4_38"):
        for label, t, options in (
            ("step_size=1/200", torch.tensor([0.0, 1.0]), {"step_size": 1.0 / 200}),
            ("grid = 201 output times", torch.linspace(0.0, 1.0, 201), None),
        ):

            def make(lib, method=method, t=t, options=options):
                def run():
                    with torch.no_grad():
                        lib.odeint(tiny, y8, t, method=method, options=options)

                return run

            add(
                f"MLP 2→16→2 batch 8, {method}, {label}",
                make,
                lambda lib, method=method, t=t, options=options: counted(
                    lib, tiny, y8, t, method=method, options=options
                ),
            )
    # bench_peers (a): midpoint, 200 steps.
    t2 = torch.tensor([0.0, 1.0])

    def make_mid(lib):
        def run():
            with torch.no_grad():
                lib.odeint(tiny, y8, t2, method="midpoint", options={"step_size": 1.0 / 200})

        return run

    add(
        "MLP 2→16→2 batch 8, midpoint, 200 steps",
        make_mid,
        lambda lib: counted(lib, tiny, y8, t2, method="midpoint", options={"step_size": 1.0 / 200}),
    )
    # bench_solvers 2: dopri5 at 1e-8.
    t20 = torch.linspace(0.0, 1.0, 20)
    kw8 = dict(rtol=1e-8, atol=1e-8, method="dopri5")

    def make_tiny_adaptive(lib):
        def run():
            with torch.no_grad():
                lib.odeint(tiny, y8, t20, **kw8)

        return run

    add(
        "MLP 2→16→2 batch 8, dopri5 1e-8, 20 outputs",
        make_tiny_adaptive,
        lambda lib: counted(lib, tiny, y8, t20, **kw8),
    )
    # bench_solvers 3 / bench_peers (b)-(d): MLP 32→128→128→32, batch 256.
    big = MLPField([32, 128, 128, 32])
    y256 = torch.randn(256, 32)
    t10 = torch.linspace(0.0, 1.0, 10)
    for method in ("dopri5", "tsit5"):
        kw = dict(rtol=1e-6, atol=1e-6, method=method)

        def make_fwd(lib, kw=kw):
            def run():
                with torch.no_grad():
                    lib.odeint(big, y256, t10, **kw)

            return run

        add(
            f"MLP 32→128→128→32 batch 256, {method} 1e-6, forward",
            make_fwd,
            lambda lib, kw=kw: counted(lib, big, y256, t10, **kw),
        )
    kw6 = dict(rtol=1e-6, atol=1e-6, method="dopri5")
    y256g = y256.clone().requires_grad_(True)
    for mode in ("backprop", "adjoint"):

        def make_train(lib, mode=mode):
            solve = lib.odeint if mode == "backprop" else lib.odeint_adjoint

            def run():
                zero_grads(big, y256g)
                solve(big, y256g, t10, **kw6).pow(2).mean().backward()

            return run

        def nfe_train(lib, mode=mode):
            c = CountNFE(big)
            solve = lib.odeint if mode == "backprop" else lib.odeint_adjoint
            solve(c, y256g, t10, **kw6).pow(2).mean().backward()
            return c.nfe

        add(f"MLP 32→128→128→32 batch 256, dopri5 1e-6, forward + backward ({mode})", make_train, nfe_train)

    # bench_peers (e): Van der Pol, batch 256, float32.
    class VdP(torch.nn.Module):
        def forward(self, t, y):
            x, v = y[..., 0], y[..., 1]
            return torch.stack([v, 1.0 * (1 - x * x) * v - x], -1)

    vdp = VdP()
    yv = torch.randn(256, 2)
    tv = torch.linspace(0.0, 10.0, 50)
    kwv = dict(rtol=1e-6, atol=1e-6, method="dopri5")

    def make_vdp(lib):
        def run():
            with torch.no_grad():
                lib.odeint(vdp, yv, tv, **kwv)

        return run

    add("Van der Pol batch 256, dopri5 1e-6, 50 outputs", make_vdp, lambda lib: counted(lib, vdp, yv, tv, **kwv))

    # The per-sample clock (bench_per_sample's kind): Van der Pol with a stiffness per sample.
    mus = torch.linspace(0.5, 4.0, 64, dtype=torch.float64)

    def ps_func(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mus * (1 - x * x) * v - x], -1)

    yp = torch.randn(64, 2, dtype=torch.float64)
    tp = torch.linspace(0.0, 5.0, 20, dtype=torch.float64)
    kwp = dict(rtol=1e-6, atol=1e-8, method="dopri5", options={"per_sample": True})

    def make_ps(lib):
        def run():
            with torch.no_grad():
                lib.solve(ps_func, yp, tp, **kwp)

        return run

    def nfe_ps(lib):
        with torch.no_grad():
            return int(torch.as_tensor(lib.solve(ps_func, yp, tp, **kwp).stats.nfe).sum())

    add("per-sample Van der Pol, 64 samples, dopri5 1e-6", make_ps, nfe_ps)

    # A small stiff system (Robertson) with rodas5p and radau5: the stiff families' steppers.
    def rober(t, y):
        a, b, c = y[..., 0], y[..., 1], y[..., 2]
        return torch.stack([-0.04 * a + 1e4 * b * c, 0.04 * a - 1e4 * b * c - 3e7 * b * b, 3e7 * b * b], -1)

    yr = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    tr = torch.tensor([0.0, 1e2], dtype=torch.float64)
    for method in ("rodas5p", "radau5", "kvaerno5"):
        kws = dict(rtol=1e-6, atol=1e-10, method=method)

        def make_stiff(lib, kws=kws):
            def run():
                with torch.no_grad():
                    lib.solve(rober, yr, tr, **kws)

            return run

        def nfe_stiff(lib, kws=kws):
            with torch.no_grad():
                return int(lib.solve(rober, yr, tr, **kws).stats.nfe)

        add(f"Robertson to t=100, {method} 1e-6", make_stiff, nfe_stiff)
    return out


def main(argv=None) -> int:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        extra=lambda p: (
            p.add_argument("--base", required=True, help="the git revision to compare against"),
            p.add_argument("--pairs", type=int, default=None, help="alternating pairs per workload"),
            p.add_argument("--only", default=None, help="a regular expression: run only the workloads it finds"),
        ),
    )
    setup()
    pairs = args.pairs or (7 if args.quick else 31)
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, Path(tmp))
        rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
        new_name = head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
        rows = []
        for name, make, nfe in workloads(neuralode, base):
            if args.only and not re.search(args.only, name):
                continue
            n_new, n_base = nfe(neuralode), nfe(base)
            timing = time_pair(make(neuralode), make(base), pairs=pairs)
            row = [
                name,
                timing.ratio_text(),
                f"{timing.ours_s * 1e3:.2f}",
                f"{timing.peer_s * 1e3:.2f}",
                f"{n_new} / {n_base}",
            ]
            print(" | ".join(row), flush=True)
            rows.append(row)
    table = markdown_table(["workload", "time new / base [IQR]", "new ms", "base ms", "NFE new / base"], rows)

    intro = (
        f"New: {new_name}; base: {rev.stdout.strip()} (`git archive`, imported as `neuralode_base`). "
        f"{pairs} alternating pairs per workload, one torch thread, medians of the per-pair ratios new / base "
        "with the interquartile range (< 1: the new tree is faster). The millisecond columns are medians, for "
        f"scale only.\n\n"
        "    python benchmarks/compare_revisions.py --base REV"
    )
    write_markdown(args.out / "revisions.md", "neuralode against an earlier revision of itself", intro, [table])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
