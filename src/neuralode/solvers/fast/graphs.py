"""The compiled runs' graphs: built once per ``func`` and settings (cached weakly per func), and called with the
fallback the caller names where dynamo cannot compile them (a warning, once)."""

from __future__ import annotations

import contextlib
import time
import warnings
import weakref
from collections.abc import Callable, Iterator

import torch

from ..methods.compiled import compile_errors, compiled_fn, fresh_code, inductor_options

_CACHE: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()


def graph(func, key, backend: str, device: torch.device, make: Callable, tune: bool = True) -> dict:
    """The compiled run for ``func`` and ``key`` (cached weakly per func): ``make()`` gives the run and the
    evaluations per attempt. The entry also records whether the graph has run and why it cannot compile.
    ``tune=False``: without inductor's GEMM autotuning (``cpp_wrapper`` alone on the CPU), which fails on a graph
    holding ``torch.func.vjp`` inside a ``while_loop`` in torch 2.13 ("'FakeTensor' object has no attribute
    'get_dtype'", the grid run's backward)."""
    try:
        per_func = _CACHE.setdefault(func, {})
    except TypeError:  # not weak-referenceable: compile for this solve only
        per_func = {}
    entry = per_func.get(key)
    if entry is None:
        run, n_new = make()
        options = inductor_options(backend, device, False).get("options")
        if not tune and options:
            options = {k: v for k, v in options.items() if not k.startswith("max_autotune")}
        compiled = compiled_fn(fresh_code(run), backend, options)
        entry = per_func[key] = {"compiled": compiled, "n_new": n_new, "failed": None, "ran": False}
    return entry


_SET = [0]  # how many dynamo_settings blocks are open


@contextlib.contextmanager
def dynamo_settings() -> Iterator[None]:
    """The dynamo configuration the runs are traced under, set for the block (a solve's calls open it once: setting
    torch's configuration costs ~40 µs a call, a third of a call that takes no step).

    An int attribute that changes (a call counter) becomes an input rather than a recompilation (as in
    CompiledGraph); the tableau's coefficients stay constants of the graph: runs of several methods share this
    module's code, and a float that differs between two compilations of the same code would otherwise become a
    graph input, which the while_loop's body cannot lower."""
    if _SET[0]:
        yield
        return
    import torch._dynamo.config as dynamo_config

    unspec, floats = dynamo_config.allow_unspec_int_on_nn_module, dynamo_config.specialize_float
    dynamo_config.allow_unspec_int_on_nn_module, dynamo_config.specialize_float = True, True
    _SET[0] += 1
    try:
        yield
    finally:
        _SET[0] -= 1
        dynamo_config.allow_unspec_int_on_nn_module, dynamo_config.specialize_float = unspec, floats


def call(entry: dict, args: tuple, stats, instead: str):
    """One call of a run's graph: its outputs, or ``None`` where dynamo cannot compile it (warned once, and the
    entry remembers it). Counts the graphs compiled (``stats.n_compiles``) and times the graph's first call
    (``stats.compile_s``). Under :func:`dynamo_settings` (opened here unless the caller holds it open)."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]
    before, start = graphs["unique_graphs"], time.perf_counter()
    try:
        with dynamo_settings():
            out = entry["compiled"](*args)
    except compile_errors() as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        entry["failed"] = f"{type(exc).__name__}: {lines[0] if lines else ''}"
        warnings.warn(
            f"options['compile']: torch.compile could not compile the solve's run of steps as one graph "
            f"({entry['failed'][:300]}); {instead}, with the same steps. Common causes: a func with side effects "
            "(a call counter), .item() or a branch on a tensor's value.",
            RuntimeWarning,
            stacklevel=6,
        )
        return None
    stats.n_compiles += graphs["unique_graphs"] - before
    if not entry["ran"]:
        stats.compile_s = time.perf_counter() - start
        entry["ran"] = True
    return out
