"""``options={"compile": True}``: the Runge-Kutta step under ``torch.compile(fullgraph=True)``.

What is compiled is one whole step: every stage evaluation of ``func``, the stage combinations,
the propagated solution and the error estimate, as one graph. Time and step size enter as 0-dim
tensors, so a new step size reuses the compiled graph instead of recompiling (``torch.compile``
would otherwise guard on every Python float it saw). The loop, the controller, output
interpolation and events stay eager: they run once per step and decide, which is what Python is
for.

When it pays is a measurement, not a rule (``benchmarks/bench_compile.py``; its figures against
the eager solve are in ``benchmarks/results/compile.md``, "Adaptive steps"): compilation removes
the per-operation dispatch of a step whose operations are small, and gains little where matrix
products dominate the step. Compiling the step with the chunks' CPU configuration (``TUNE_STEP``,
``cpp_wrapper`` and GEMM autotuning) did not pay there, so it is off. Every graph compiled with inductor
(:func:`compiled_fn`) evaluates a float32 ``tanh`` as a rational function within 7 units in the last place
(:mod:`~neuralode.solvers.methods.fast_tanh`, as XLA does), several times cheaper than ATen's SLEEF ``tanh``,
which inductor's generated code would otherwise call, and a matrix product of at most 4,096 multiply-adds as a
generated loop fused with its neighbours instead of a GEMM call (:mod:`~neuralode.solvers.methods.small_matmul`).
What a compiled step
leaves in Python per step is the loop around it: the error norm and its one host
synchronisation, the controller, the dense output and dynamo's call overhead. The first call
pays the compilation (``Solution.stats.compile_s`` reports it). Autograd works through
the compiled step (``torch.compile`` traces the backward too), and so do the adjoint (its
backward solve runs eagerly: its dynamics are a vector-Jacobian product, which ``fullgraph``
tracing does not take) and events (located on the interpolants, outside the compiled step). ``func`` must be traceable by ``torch.compile``
without graph breaks (``fullgraph=True`` turns a break into an error); steps that must see
one side of a discontinuity (``jump_t``, ``perturb``) run eagerly.

**What cannot be compiled runs eagerly** (:class:`CompiledGraph`). A ``func`` that ``torch.compile`` cannot trace
(``.item()`` or a branch on a tensor's value, numpy, a host synchronisation), or that keeps recompiling, makes the
solve warn once, naming dynamo's reason, and take that graph's steps eagerly from then on: the same steps, the
same answer to rounding, never a crash. A failed compilation runs none of ``func``, so side effects such as a call
counter are not doubled. The commonest such ``func`` is a module that counts its calls (``self.nfe += 1``, as
torchdiffeq's examples do): dynamo guards on an ``int`` attribute of a module by value, so every call would
recompile until its recompile limit; every graph is called with ``allow_unspec_int_on_nn_module``, under which an
``int`` attribute that changes becomes a graph input on the first recompilation (an ``int`` that never changes
stays a constant), so such a module compiles a graph or two more, not one per call, and its count stays right
(dynamo applies the increments of the traced calls after each graph). A ``func`` that lets the solver count its
calls (:mod:`neuralode.solvers.counting`, :class:`neuralode.models.ODEFunc`) is called with its counting
suspended under ``compile``, so its graphs hold no side effect, and is given ``stats.nfe`` after the solve.

Compiled steps are cached per ``func`` object (weakly), method, backend and state layout, so a
training loop that solves with the same module every iteration compiles once.

Fixed-step methods on a grid run their steps as one compiled ``while_loop`` on the CPU
(:mod:`neuralode.solvers.fast.grid_run`, backpropagation included where ``func`` is a module) and compile
``options["compile_steps"]`` consecutive steps as one graph otherwise (:mod:`neuralode.solvers.fast.compiled_chunks`), and an adaptive ``dopri5``/``tsit5``/``bosh3`` solve
without autograd runs its whole run of steps as one compiled ``while_loop`` (:mod:`neuralode.solvers.fast.device_run`);
the single compiled step here serves the other adaptive solves, ``compile_steps=1``, and the fixed-grid solves
that those do not take (events, step callbacks, ``perturb``, ``dense``, cubic interpolation).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

import torch

from .stepper import StepResult, _plan, rk_step
from .tableau import ButcherTableau

_CACHE: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()


def rk_stages(
    raw: Callable, plan, y0: torch.Tensor, f0: torch.Tensor, dt: torch.Tensor, stage_time: Callable[[int], torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One explicit Runge-Kutta step written for tracing: ``(y1, k)`` from the first stage ``f0``,
    with stage ``i`` evaluated at ``stage_time(i)`` (the compiled step and the compiled chunks
    trace this same code)."""
    k = [f0]
    y1 = None
    last = len(plan.rows) - 1
    for i, row in enumerate(plan.rows, start=1):
        yi = y0
        for j, a in row:
            yi = yi + k[j] * (a * dt).to(y0.dtype)
        if plan.fsal and i - 1 == last:
            y1 = yi
        k.append(raw(stage_time(i), yi))
    if y1 is None:
        y1 = y0
        for j, b in plan.b:
            y1 = y1 + k[j] * (b * dt).to(y0.dtype)
    return y1, k


def weighted(coeffs, k, dt):
    """``sum_j k_j (coeff_j dt)`` over the nonzero ``(j, coeff_j)`` pairs, written for tracing (the error estimates
    of the compiled step and of the device run)."""
    (j0, c0), rest = coeffs[0], coeffs[1:]
    out = k[j0] * (c0 * dt)
    for j, cj in rest:
        out = out + k[j] * (cj * dt)
    return out


def _make_step(raw: Callable, tableau: ButcherTableau, half: bool) -> Callable:
    """A pure step ``(th, y0, f0) -> (y1, y_err, y_err_aux, k)``, where ``th = [t0, dt]`` is one
    tensor (one host-to-device copy per step instead of two)."""
    plan = _plan(tableau)
    c = tableau.c

    def step(th: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor):
        t0, dt = th[0], th[1]
        y1, k = rk_stages(raw, plan, y0, f0, dt, lambda i: t0 + c[i] * dt)
        ke = [x.float() for x in k] if half else k
        dte = dt.float() if half else dt.to(ke[0].real.dtype if ke[0].is_complex() else ke[0].dtype)
        y_err = weighted(plan.b_err, ke, dte) if plan.b_err else None
        y_err_aux = weighted(plan.b_err_aux, ke, dte) if plan.b_err_aux else None
        return y1, y_err, y_err_aux, tuple(k)

    return step


# Inductor settings for a CPU graph compiled without autograd (see inductor_options).
CPU_INDUCTOR_OPTIONS = {"cpp_wrapper": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
# Whether the single (adaptive) step takes CPU_INDUCTOR_OPTIONS too; the chunks always do. Off: a step graph
# leaves the loop's Python around it, so the tuning cannot pay for its longer compilation (benchmarks/results/
# compile.md, "Adaptive steps").
TUNE_STEP = False


def inductor_options(backend: str, device: torch.device, grad: bool) -> dict:
    """``torch.compile`` keyword arguments for a step or chunk graph: on the CPU with the inductor
    backend and autograd off, ``options=CPU_INDUCTOR_OPTIONS`` (scoped to that compilation, the
    user's global inductor configuration is left alone); otherwise none (inductor's defaults).

    ``cpp_wrapper`` makes the graph's kernel calls from generated C++ instead of a Python wrapper
    (on a small state the Python call per kernel costs more than the kernel); ``max_autotune`` with the ``CPP`` GEMM
    backend times generated C++ matrix-product kernels, with fused bias and activation epilogues,
    against ATen's and keeps the faster. Both make compilation slower. A graph recording autograd
    keeps the defaults: its backward graph is compiled too, and the autotuned backward of the tiny
    MLP's chunk took minutes to compile (``benchmarks/results/compile.md``).
    """
    if backend == "inductor" and device.type == "cpu" and not grad and CPU_INDUCTOR_OPTIONS:
        return {"options": dict(CPU_INDUCTOR_OPTIONS)}
    return {}


def fresh_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own: torch.compile keeps its graphs on the code object, with
    a limit on how many (one per func, method and state layout here) before ``fullgraph=True``
    fails, so each compiled function starts with an empty cache."""
    import types

    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def compile_errors() -> tuple[type[BaseException], ...]:
    """The exceptions with which ``torch.compile`` says it cannot compile a function: dynamo's (tracing,
    unsupported code, data-dependent control flow, the backend's failures) and its recompile limit."""
    import torch._dynamo.exc as dynamo_exc

    return (dynamo_exc.TorchDynamoException, dynamo_exc.FailOnRecompileLimitHit)


class CompiledGraph:
    """A ``torch.compile(fullgraph=True)`` graph of ``eager``, called in its place, and ``eager`` itself once the
    graph cannot be compiled (``failed``: dynamo's reason).

    Every call runs under ``allow_unspec_int_on_nn_module`` (see the module docstring), set for the call and
    restored after it. A call that raises one of :func:`compile_errors` has run none of ``eager``'s code: the wrapper warns once,
    naming the reason, and runs ``eager`` on the same arguments, then on every later call."""

    __slots__ = ("compiled", "eager", "failed", "what", "compiles", "_config", "_graphs")

    def __init__(self, compiled: Callable, eager: Callable, what: str):
        import torch._dynamo.config as dynamo_config
        from torch._dynamo.utils import counters

        self.compiled, self.eager, self.what = compiled, eager, what
        self.failed: str | None = None
        self.compiles = 0  # graphs dynamo compiled in its calls (first compilations and recompilations)
        self._config, self._graphs = dynamo_config, counters["stats"]  # read around every call

    def __call__(self, *args):
        if self.failed is not None:
            return self.eager(*args)
        config, graphs = self._config, self._graphs
        before = graphs["unique_graphs"]
        # Set for the call rather than patched (a patch costs about 20 µs, this about 5): dynamo reads it whenever
        # the call compiles, which may be any call (a guard failing).
        unspec = config.allow_unspec_int_on_nn_module
        try:
            config.allow_unspec_int_on_nn_module = True
            out = self.compiled(*args)
            self.compiles += graphs["unique_graphs"] - before
            return out
        except compile_errors() as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            self.failed = f"{type(exc).__name__}: {lines[0] if lines else ''}"
            import warnings

            warnings.warn(
                f"options['compile']: torch.compile could not compile {self.what} ({self.failed[:300]}); it runs "
                "eagerly instead, with the same steps. Common causes: .item(), numpy or a branch on a tensor's value "
                "inside func, or a func that changes a float attribute on every call (each value recompiles). "
                "Drop options['compile'] to silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.eager(*args)
        finally:
            config.allow_unspec_int_on_nn_module = unspec


# What neuralode's inductor graphs decompose (see compiled_fn): float32 tanh into the rational function of
# fast_tanh, small matrix products into generated loops (small_matmul).
FAST_TANH = True
SMALL_MATMUL = True


def compiled_fn(fn: Callable, backend: str, options: dict | None = None) -> Callable:
    """``torch.compile(fn, fullgraph=True, backend=backend)`` with inductor ``options``; for inductor, with the
    float32 ``tanh`` of :mod:`~neuralode.solvers.methods.fast_tanh` (while :data:`FAST_TANH`) and the small
    matrix products of :mod:`~neuralode.solvers.methods.small_matmul` (while :data:`SMALL_MATMUL`).

    The inductor backend is ``torch.compile``'s own (the same configuration, ``mode`` and options), given
    inductor's decomposition table with these added and compiled without AOT autograd's on-disk cache, whose
    key does not include the decompositions: it could otherwise hand a graph compiled without them to this
    backend, or this backend's graph to a user's ``torch.compile`` of the same code. Inductor's own graph cache,
    keyed by the decomposed graph, still serves a second process. The flags are read when a graph is compiled.
    """
    if backend == "inductor" and (FAST_TANH or SMALL_MATMUL):
        return torch.compile(fn, fullgraph=True, backend=_DecomposingInductor(None, options, None))
    return torch.compile(fn, fullgraph=True, backend=backend, options=options or None)


class _DecomposingInductor(torch._TorchCompileInductorWrapper):
    """``torch.compile``'s inductor backend with the decompositions of :func:`compiled_fn`."""

    def __call__(self, model_, inputs_, *, config_patches=None):
        import torch._functorch.config as functorch_config
        from torch._inductor.compile_fx import compile_fx
        from torch._inductor.decomposition import select_decomp_table

        from . import fast_tanh, small_matmul

        table = {
            **select_decomp_table(),
            **(fast_tanh.decompositions() if FAST_TANH else {}),
            **(small_matmul.decompositions() if SMALL_MATMUL else {}),
        }
        with functorch_config.patch(enable_autograd_cache=False):
            return compile_fx(
                model_,
                inputs_,
                config_patches={**self.config, **(config_patches or {})},
                decompositions=table,
                compile_region_name=self.name,
            )


def compile_graph(
    fn: Callable, backend: str, device: torch.device, grad: bool, tune: bool = True, what: str = "the step"
) -> CompiledGraph:
    """``torch.compile(fullgraph=True)`` of ``fn`` with a code object of its own (:func:`fresh_code`),
    with :func:`inductor_options` when ``tune``.

    ``dynamic`` is left unset: ``dynamic=False`` makes every call patch and restore dynamo's
    configuration around the graph (a visible share of a small graph's call cost), and each graph
    here sees one set of input shapes (the callers' caches are keyed by them), so no
    recompilation could mark a dimension dynamic.
    """
    options = inductor_options(backend, device, grad).get("options") if tune else None
    return CompiledGraph(compiled_fn(fresh_code(fn), backend, options), fn, what)


def compiled_stepper(problem, tableau: ButcherTableau, backend: str, stats) -> Callable:
    """``take(side, t, y, f0, h, stage, memory)`` like the loop's eager one, with the step compiled.

    The api builds it (:func:`~neuralode.solvers.fast.choose` says when) and hands it to the loop
    (:func:`~neuralode.solvers.loop.integrate`'s ``take``), which steps with it as with its own."""
    func = problem.func
    if problem.is_tuple:

        def raw(tt, y):
            return problem.flatten(func(tt, problem.unflatten(y)))
    else:
        raw = func
    half = problem.dtype in (torch.float16, torch.bfloat16)
    grad = torch.is_grad_enabled()
    key = (
        tableau.name,
        backend,
        problem.is_tuple,
        tuple(tuple(s) for s in problem.shapes),
        problem.dtype,
        str(problem.device),
        grad,
    )
    try:
        per_func = _CACHE.setdefault(func, {})
    except TypeError:  # not weak-referenceable (a builtin): compile for this solve only
        per_func = {}
    compiled = per_func.get(key)
    if compiled is None:
        compiled = per_func[key] = [
            compile_graph(_make_step(raw, tableau, half), backend, problem.device, grad, tune=TUNE_STEP),
            False,
        ]
    n_new = tableau.stages - 1
    t_dtype, device = problem.t_dtype, problem.device

    def take(side: int, t: float, y: torch.Tensor, f0, h: float, stage, memory=None):
        if f0 is None:
            f0 = problem(t, y, side)
        if stage is not problem:  # a step that must see one side of a discontinuity: eager
            return f0, rk_step(stage, t, y, f0, h, tableau)
        th = torch.tensor((t, h), dtype=t_dtype, device=device)
        graph = compiled[0]
        before = graph.compiles
        if not compiled[1]:
            start = time.perf_counter()
            out = graph(th, y, f0)
            stats.compile_s = time.perf_counter() - start
            compiled[1] = True
        else:
            out = graph(th, y, f0)
        stats.n_compiles += graph.compiles - before
        stats.nfe += n_new
        y1, y_err, y_err_aux, k = out
        return f0, StepResult(y1, y_err, k, y_err_aux)

    return take
