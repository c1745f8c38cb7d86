"""Helpers shared by the benchmark scripts: setup, paired timing, NFE counting, memory, tables.

Every benchmark compares neuralode with a peer (torchdiffeq) measured in the same process, and
reports the ratio ours/peer (the project's rule: never a bare absolute time). :func:`time_pair` alternates
the two callables after warm-up and takes the median of the per-pair ratios, so slow drifts of
the machine (frequency scaling, a neighbour's load) cancel within each pair.

Run the scripts from the repository root (``python benchmarks/run_all.py`` or ``make bench``);
they put the root on ``sys.path`` themselves so that ``benchmarks.*`` imports work.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# One intra-op thread for every run. The solver-overhead cases (batch 8, a 2-16-2 MLP) are far too
# small for a second thread to help, and on this 2-core machine a second thread per process makes
# timings sensitive to whatever else runs (the test suite, the other benchmark process); both
# libraries get the same setting, so the ratios compare the solvers, not the thread pool.
NUM_THREADS = 1


def setup(seed: int = 0) -> None:
    """Fix the thread count and the random seed; call once at the start of a script."""
    torch.set_num_threads(NUM_THREADS)
    torch.manual_seed(seed)


def parse_args(
    description: str, argv: Sequence[str] | None = None, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The flags every benchmark script takes: ``--quick`` and ``--out``; ``extra(parser)`` adds a
    script's own."""
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: fewer repetitions and (DETEST) only tolerances 1e-3 and 1e-6",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help=f"directory for the markdown tables and PNGs (default: {RESULTS_DIR})",
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# The machine.


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, str]:
    """CPU model, core count, threads used and library versions, as strings."""
    import numpy
    import torchdiffeq

    import neuralode

    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchdiffeq": torchdiffeq.__version__,
        "neuralode": neuralode.__version__,
        "numpy": numpy.__version__,
        # Other processes share the cores; the paired ratios tolerate that, absolute times do not.
        "load average (1/5/15 min) when written": "/".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def machine_markdown() -> str:
    """:func:`machine_info` as one markdown line."""
    return "Machine: " + "; ".join(f"{k} {v}" for k, v in machine_info().items()) + "."


# --------------------------------------------------------------------------------------------
# Timing.


@dataclass(frozen=True)
class PairTiming:
    """Result of :func:`time_pair`: the median per-pair ratio and each side's median time.

    Attributes:
        ratio: median over pairs of ``time(ours) / time(peer)``.
        ratio_q1, ratio_q3: first and third quartiles of the per-pair ratios (the spread).
        ours_s, peer_s: median seconds per call of each side.
        pairs: number of pairs measured.
        calls_per_sample: calls of each callable per timed sample (for fast callables); of
            ``ours`` only when ``peer_calls_per_sample`` differs.
        peer_calls_per_sample: calls of ``peer`` per timed sample.
    """

    ratio: float
    ratio_q1: float
    ratio_q3: float
    ours_s: float
    peer_s: float
    pairs: int
    calls_per_sample: int
    peer_calls_per_sample: int | None = None

    def ratio_text(self) -> str:
        """``0.42× [0.41–0.44]``: the median ratio and its interquartile range."""
        return f"{self.ratio:.2f}× [{self.ratio_q1:.2f}–{self.ratio_q3:.2f}]"


def iqr_text(ratios: Sequence[float]) -> str:
    """``0.42× [0.41–0.44]``: the median of ``ratios`` and their interquartile range."""
    q = statistics.quantiles(ratios, n=4)
    return f"{statistics.median(ratios):.2f}× [{q[0]:.2f}–{q[2]:.2f}]"


def alternate(fns: dict[str, Callable[[], Any]], pairs: int) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` in ``pairs`` rounds, calling them in turn within each round (one call a sample:
    for solves of milliseconds and more)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(pairs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _sample(fn: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def time_pair(
    ours: Callable[[], Any],
    peer: Callable[[], Any],
    *,
    pairs: int = 20,
    warmup: int = 3,
    min_sample_s: float = 0.02,
    per_side: bool = False,
) -> PairTiming:
    """Time ``ours()`` against ``peer()`` alternately in this process.

    Both are called ``warmup`` times first. Each sample times ``number`` consecutive calls, with
    ``number`` chosen from the warm-up so that a sample lasts at least ``min_sample_s`` (timer
    resolution and per-call jitter matter for millisecond-sized calls). Pairs alternate which
    side runs first, and the garbage collector is off while timing (as ``timeit`` does).

    ``number`` is set by the slower side, the same for both. With ``per_side=True`` each side
    gets its own ``number`` (for sides whose times differ by orders of magnitude, e.g. a 1 ms
    compiled solve against a 30 ms eager one, so that the fast side's samples are not single
    calls at timer resolution); the ratio is then of per-call means.

    Returns:
        A :class:`PairTiming` with the median of the per-pair ratios ours/peer.
    """
    warm_ours, warm_peer = [], []
    for _ in range(warmup):
        warm_ours.append(_sample(ours, 1))
        warm_peer.append(_sample(peer, 1))

    def calls(warm: list[float]) -> int:
        return max(1, math.ceil(min_sample_s / max(min(warm), 1e-9)))

    if per_side:
        n_ours, n_peer = calls(warm_ours), calls(warm_peer)
    else:
        n_ours = n_peer = calls([max(a, b) for a, b in zip(warm_ours, warm_peer)])
    ratios, t_ours, t_peer = [], [], []
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(pairs):
            if i % 2 == 0:
                a = _sample(ours, n_ours)
                b = _sample(peer, n_peer)
            else:
                b = _sample(peer, n_peer)
                a = _sample(ours, n_ours)
            t_ours.append(a)
            t_peer.append(b)
            ratios.append(a / b)
            if i % 8 == 7:
                gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return PairTiming(
        ratio=statistics.median(ratios),
        ratio_q1=q[0],
        ratio_q3=q[2],
        ours_s=statistics.median(t_ours),
        peer_s=statistics.median(t_peer),
        pairs=pairs,
        calls_per_sample=n_ours,
        peer_calls_per_sample=n_peer,
    )


# --------------------------------------------------------------------------------------------
# Counting evaluations.


class CountNFE(nn.Module):
    """Wraps ``func(t, y)`` (a plain function or an ``nn.Module``) and counts its calls.

    A wrapped module stays a submodule, so ``CountNFE(module).parameters()`` are the module's own
    parameters (what both libraries' adjoints differentiate by default). Works the same under
    either library, so forward and backward evaluations are counted alike: read ``nfe`` after
    the forward pass, and again after ``backward()``.
    """

    def __init__(self, func: Callable[[torch.Tensor, Any], Any]) -> None:
        super().__init__()
        if isinstance(func, nn.Module):
            self.func = func
        else:
            object.__setattr__(self, "_plain", func)
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        func = self.func if "func" in self._modules else self._plain
        return func(t, y)

    def reset(self) -> None:
        self.nfe = 0


# --------------------------------------------------------------------------------------------
# Models shared by the scripts.


class MLPField(nn.Module):
    """``dy/dt = MLP(y)``, autonomous: Linear layers of the given sizes with tanh between them.

    ``MLPField([32, 128, 128, 32])`` is 32→128→tanh→128→tanh→32.
    """

    def __init__(self, sizes: Sequence[int], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i > 0:
                layers.append(nn.Tanh())
            layers.append(nn.Linear(n_in, n_out, dtype=dtype))
        self.net = nn.Sequential(*layers)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class TorchdiffeqAdjointBlock(nn.Module):
    """The paper's reference ODE block: ``torchdiffeq.odeint_adjoint(func, x, [0, 1], rtol=tol, atol=tol)[1]``.

    ``t`` is a buffer, so the block follows ``.to(device)``. (``bench_mnist.TorchdiffeqBlock`` is
    the same block; scripts that do not import the MNIST training code use this one.)
    """

    def __init__(self, func: nn.Module, tol: float) -> None:
        super().__init__()
        self.func = func
        self.tol = tol
        self.register_buffer("t", torch.tensor([0.0, 1.0]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchdiffeq import odeint_adjoint

        return odeint_adjoint(self.func, x, self.t.to(x.dtype), rtol=self.tol, atol=self.tol, method="dopri5")[1]


def zero_grads(module: nn.Module, *tensors: torch.Tensor) -> None:
    """Drop accumulated gradients so repeated backward passes do the same work."""
    for p in module.parameters():
        p.grad = None
    for x in tensors:
        x.grad = None


# --------------------------------------------------------------------------------------------
# Memory kept for backward.


class _Held:
    """What the pack hook hands autograd: the saved tensor, in an object that can die."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


@dataclass(frozen=True)
class SavedBytes:
    """Bytes of tensors autograd held for backward during one forward+backward.

    Attributes:
        peak_distinct: the most bytes held at once, counting each tensor storage region once (the
            same weight saved by every evaluation counts once): the memory actually pinned.
        packed_total: the sum of ``numel * element_size`` over every tensor packed, repeats
            included, whether or not it was freed before backward.
        peak_at: ``"forward"`` or ``"backward"``: when the peak occurred.
    """

    peak_distinct: int
    packed_total: int
    peak_at: str


def measure_saved_bytes(forward: Callable[[], torch.Tensor]) -> SavedBytes:
    """Run ``forward()`` (returns a scalar loss) and its ``backward()`` under saved-tensor hooks.

    Tracks the live set of packed tensors: a tensor counts from when autograd packs it until the
    graph node holding it is freed (during backward, or earlier for graphs discarded on the way,
    e.g. the adjoint's per-evaluation vector-Jacobian products).

    Not seen: tensors that ``torch.utils.checkpoint`` recomputes during backward are held by the
    checkpoint's own hooks, which take precedence over these (its saved *inputs* are seen).
    """
    live: dict[tuple[int, int], list[int]] = {}  # (data_ptr, nbytes) -> [refcount, nbytes]
    state = {"now": 0, "peak": 0, "total": 0, "phase": "forward", "peak_at": "forward"}

    def release(key: tuple[int, int]) -> None:
        entry = live[key]
        entry[0] -= 1
        if entry[0] == 0:
            state["now"] -= entry[1]
            del live[key]

    def pack(x: torch.Tensor) -> _Held:
        nbytes = x.numel() * x.element_size()
        key = (x.data_ptr(), nbytes)
        state["total"] += nbytes
        if key in live:
            live[key][0] += 1
        else:
            live[key] = [1, nbytes]
            state["now"] += nbytes
            if state["now"] > state["peak"]:
                state["peak"], state["peak_at"] = state["now"], state["phase"]
        # Hold a detached alias (same storage). Holding ``x`` itself would, for a saved *output*
        # (tanh saves its result), make a reference cycle node -> hook object -> x -> node that
        # no garbage collector can see: with ``retain_graph=True`` (torchdiffeq's adjoint uses it)
        # every graph would then live for ever and the measurement would report a leak that
        # exists only under the hooks. autograd restores the autograd metadata on unpack itself.
        held = _Held(x.detach())
        weakref.finalize(held, release, key)
        return held

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.tensor):
        loss = forward()
        state["phase"] = "backward"
        loss.backward()
    del loss
    gc.collect()
    return SavedBytes(state["peak"], state["total"], state["peak_at"])


# --------------------------------------------------------------------------------------------
# Numbers and tables.


def geometric_mean(values: Sequence[float]) -> float:
    """exp(mean(log v)); zeros are clamped to 1e-300 so an exact answer does not sink the mean."""
    return math.exp(sum(math.log(max(v, 1e-300)) for v in values) / len(values))


def interpolate_loglog(xs: Sequence[float], ys: Sequence[float], x_target: float) -> float | None:
    """``y`` at ``x_target`` on the piecewise log-log line through ``(xs[i], ys[i])`` in the order given.

    Uses the first segment whose ends bracket ``x_target``; ``None`` if none does (the target is
    outside the range swept).
    """
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if min(x0, x1) <= x_target <= max(x0, x1):
            if x0 == x1:
                return min(y0, y1)
            w = (math.log(x_target) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp(math.log(y0) + w * (math.log(y1) - math.log(y0)))
    return None


def fmt_sci(x: float | None, digits: int = 2) -> str:
    """``9.90e-06``; ``—`` for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}e}"


def fmt_int(n: float | None) -> str:
    """``10,520``; ``—`` for None."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "—"
    return f"{round(n):,}"


def fmt_bytes(n: float) -> str:
    """Bytes in KiB/MiB with three significant digits."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one letter per column, ``l`` or ``r`` (default: first
    column left, the rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(path: Path, title: str, intro: str, sections: Sequence[str]) -> Path:
    """Write ``# title``, ``intro``, the machine line, then the sections, separated by blank lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", intro.strip(), machine_markdown(), *(s.strip() for s in sections)]
    path.write_text("\n\n".join(parts) + "\n")
    return path
