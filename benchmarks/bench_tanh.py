"""The float32 ``tanh`` of neuralode's inductor graphs (``src/neuralode/solvers/methods/fast_tanh.py``): its fit,
its accuracy and its time, beside ATen's ``tanh`` (eager and in an inductor graph) and XLA's (``jax.numpy.tanh``
under ``jit``, which diffrax's fields use).

1. The fit: ``tanh(x)/x ≈ P(s)/Q(s)``, ``s = (x/9)²``, degree 4 over 4, by linearised least squares on the
   relative error (Sanathanan–Koerner: each pass divides by the last denominator) with Lawson's reweighting toward
   the minimax error, in float64 on [0, 9]. Printed: its largest relative error and how far the shipped
   coefficients are from it.
2. Accuracy in float32 over every binade from the subnormals up and a fine grid of [0, 12]: units in the last
   place from the correctly rounded ``tanh`` (float64 reference).
3. Time of one call on a (256, 128) float32 tensor (the hidden layer of ``bench_peers``' (b)) and on a (2048, 128)
   one, one thread, the variants alternated; the slope between the two is the ``tanh``'s own time, without the
   call's fixed overhead.

Writes ``benchmarks/results/tanh.md`` (needs the ``bench`` extra)::

    .venv/bin/python benchmarks/bench_tanh.py [--quick]
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.jax_env import one_thread  # noqa: E402

one_thread()  # before jax and torch are imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import markdown_table, parse_args, setup, write_markdown  # noqa: E402
from neuralode.solvers.methods import compiled, fast_tanh  # noqa: E402


def fit(n_p: int = 5, n_q: int = 5, passes: int = 40) -> tuple[np.ndarray, np.ndarray, float]:
    """``(P, Q, largest relative error)``, lowest degree first, ``Q(0) = 1`` (see the module docstring)."""
    x = np.concatenate([np.linspace(0.0, fast_tanh.CLAMP, 40001)[1:], np.geomspace(1e-6, 0.5, 4000)])
    x.sort()
    s = (x / fast_tanh.CLAMP) ** 2
    r = np.tanh(x) / x
    basis_p = s[:, None] ** np.arange(n_p)
    basis_q = s[:, None] ** np.arange(1, n_q)
    weight, q_last = np.ones_like(x), np.ones_like(x)
    for _ in range(passes):
        rows = np.hstack([basis_p, -r[:, None] * basis_q]) * (weight / (r * q_last))[:, None]
        coef, *_ = np.linalg.lstsq(rows, r * weight / (r * q_last), rcond=None)
        p, q = coef[:n_p], np.concatenate([[1.0], coef[n_p:]])
        q_last = basis_q @ q[1:] + 1.0
        err = np.abs((basis_p @ p) / q_last / r - 1.0)
        weight = weight * np.sqrt(err / err.max()) + 1e-12
        weight /= weight.max()
    return p, q, float(err.max())


def magnitudes() -> torch.Tensor:
    binades = torch.cat([torch.linspace(1.0, 2.0, 65)[:-1] * 2.0**e for e in range(-149, 8)])
    return torch.cat([binades, torch.linspace(0.0, 12.0, 1_200_001)]).float()


def ulps(value: np.ndarray, x: np.ndarray) -> np.ndarray:
    ref = np.tanh(x.astype(np.float64))
    return np.abs(value.astype(np.float64) - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)


def accuracy() -> list[list[str]]:
    import jax
    import jax.numpy as jnp

    x = magnitudes()
    values = {
        "ATen `torch.tanh`": torch.tanh(x).numpy(),
        "rational (`fast_tanh.rational_tanh`)": fast_tanh.rational_tanh(x).numpy(),
        "XLA `jax.numpy.tanh` (jit)": np.asarray(jax.jit(jnp.tanh)(jnp.asarray(x.numpy()))),
    }
    ref32 = np.tanh(x.numpy().astype(np.float64)).astype(np.float32)
    rows = []
    for name, v in values.items():
        e = ulps(v, x.numpy())
        rows.append([name, f"{e.max():.2f}", f"{e.mean():.3f}", f"{np.mean(v != ref32):.3f}"])
    return rows


def timing(pairs: int) -> tuple[list[list[str]], int]:
    """Per call on a (256, 128) tensor, and the slope: the time per 32,768 values between that and a (2048, 128)
    tensor (what a call's fixed overhead does not enter)."""
    import jax
    import jax.numpy as jnp

    small, large = torch.randn(256, 128) * 2.0, torch.randn(2048, 128) * 2.0

    def graph(rational: bool):
        saved = compiled.FAST_TANH
        compiled.FAST_TANH = rational
        try:
            g = compiled.compiled_fn(lambda v: torch.tanh(v), "inductor")
            g(small), g(large)  # compile now, under this setting (a graph per shape)
        finally:
            compiled.FAST_TANH = saved
        return g

    jit_tanh = jax.jit(jnp.tanh)
    variants = {
        "ATen, eager": (torch.tanh, lambda x: x),
        "inductor graph, ATen tanh": (graph(False), lambda x: x),
        "inductor graph, rational tanh": (graph(True), lambda x: x),
        "XLA (jit)": (lambda x: jit_tanh(x).block_until_ready(), lambda x: jnp.asarray(x.numpy())),
    }
    fns = {}
    for name, (fn, convert) in variants.items():
        for size, x in (("small", small), ("large", large)):
            fns[name, size] = functools.partial(fn, convert(x))
    number = 100
    times: dict = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(pairs):
            for k, fn in fns.items():
                start = time.perf_counter()
                for _ in range(number):
                    fn()
                times[k].append((time.perf_counter() - start) / number * 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for name in variants:
        slope = (med[name, "large"] - med[name, "small"]) / 7.0
        rows.append([name, f"{med[name, 'small']:.1f} µs", f"{med[name, 'large']:.1f} µs", f"{slope:.1f} µs"])
    return rows, number


TIME_HEADERS = ["variant", "(256, 128)", "(2048, 128)", "slope per 32,768 values"]


def main(argv=None) -> int:
    args = parse_args(__doc__.split("\n")[0], argv)
    setup()
    p, q, err = fit()
    shipped = max(abs(a - b) / abs(b) for a, b in zip((*p, *q), (*fast_tanh.P, *fast_tanh.Q)))
    print(f"fit: largest relative error {err:.2e}; shipped coefficients within {shipped:.1e} (relative) of it")
    acc = accuracy()
    print(markdown_table(["tanh", "max ulp", "mean ulp", "share not correctly rounded"], acc))
    pairs = 5 if args.quick else 21
    tim, number = timing(pairs)
    print(markdown_table(TIME_HEADERS, tim))
    intro = (
        "Generated by `python benchmarks/bench_tanh.py`: the float32 `tanh` that neuralode's inductor graphs use "
        "(`src/neuralode/solvers/methods/fast_tanh.py`), beside ATen's and XLA's. One thread for torch and XLA."
    )
    sections = [
        "## The fit\n\n"
        f"`tanh(x)/x ≈ P(s)/Q(s)`, `s = (x/9)²`, degree 4 over 4, fitted in float64 on [0, 9]: largest relative "
        f"error **{err:.2e}**; the shipped coefficients (rounded to float32) are within {shipped:.1e} of this "
        "run's fit.",
        "## Accuracy in float32\n\n"
        "Units in the last place from the correctly rounded `tanh` (a float64 reference), over 64 points in every "
        "binade from 2⁻¹⁴⁹ to 2⁸ and 1,200,001 points on [0, 12].\n\n"
        + markdown_table(["tanh", "max ulp", "mean ulp", "share not correctly rounded"], acc),
        "## Time\n\n"
        f"One call on a (256, 128) and on a (2048, 128) float32 tensor, medians of {pairs} alternated rounds of "
        f"{number} calls; the slope is the time per 32,768 values between the two sizes, which a call's fixed "
        "overhead does not enter.\n\n" + markdown_table(TIME_HEADERS, tim),
    ]
    out = write_markdown(args.out / "tanh.md", "The float32 tanh of the compiled graphs", intro, sections)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
