"""neuralode against diffrax (JAX, jit-compiled), torchode and torchdiffeq, in one process, one thread each.

Writes ``benchmarks/results/peers.md``. Needs the ``bench`` extra (JAX's CPU build, diffrax, torchode)::

    make bench-peers                      # installs the extra into .venv, then runs this
    .venv/bin/python benchmarks/bench_peers.py [--quick] [--pairs N]

The workloads are those of issue 14:

(a) MLP 2→16→2 (tanh), batch 8, midpoint, 200 fixed steps over [0, 1];
(b) MLP 32→128→128→32 (tanh), batch 256, dopri5 at rtol = atol = 1e-6, 10 outputs on [0, 1], forward;
(c) the same with tsit5 (torchdiffeq has no tsit5);
(d) the same as (b), forward + backward of ``mean(ys²)`` with respect to the weights and ``y0``:
    neuralode by backpropagation through the solver and by its adjoint; diffrax with its default
    ``RecursiveCheckpointAdjoint``; torchode with its default ``AutoDiffAdjoint``; torchdiffeq by
    backpropagation and by ``odeint_adjoint`` (seminorm, as neuralode's adjoint uses by default);
(e) Van der Pol, μ = 2, batch 256, dopri5 at 1e-5, 200 outputs on [0, 10]: diffrax per sample by
    ``jax.vmap`` of the whole solve, torchode per sample natively, neuralode and torchdiffeq with
    one step size for the whole batch.

Fairness: the same float32 MLP weights in every library (the torch weights copied into JAX
arrays), the same initial states, each library's answer checked against a float64 reference
(scipy's DOP853 at 1e-12; gradients by torchdiffeq's float64 dopri5 at 1e-11). diffrax is
jit-compiled and warmed up first, so compile time is excluded from the timings and reported on
its own; every JAX call ends with ``block_until_ready()``. Timings are
:func:`benchmarks.common.time_pair`: alternating calls, median of the per-pair ratios with the
interquartile range.

Bookkeeping share: each neuralode solve against a bare Python loop that makes the same (counted)
evaluations ``func(t, y)`` and nothing else — (solve − bare evaluations) / solve, the part of the
solve that is the solver's own work rather than the network's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.jax_env import one_thread  # noqa: E402

one_thread()  # before jax (and torch) are imported

try:
    import diffrax
    import jax
    import jax.numpy as jnp
    import torchode
    from torchode.single_step_methods.runge_kutta import ButcherTableau as TorchodeTableau
    from torchode.single_step_methods.runge_kutta import ExplicitRungeKutta
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    sys.exit(
        f"bench_peers needs the 'bench' extra ({exc}). Install it with\n"
        "    .venv/bin/pip install -c constraints.txt -c benchmarks/constraints-bench.txt -e '.[bench]'\n"
        "or run `make bench-peers`."
    )

import numpy as np  # noqa: E402
import scipy.integrate  # noqa: E402
import torch  # noqa: E402
import torchdiffeq  # noqa: E402
from torch import nn  # noqa: E402
from torchdiffeq._impl.odeint import SOLVERS as TORCHDIFFEQ_METHODS  # noqa: E402

import neuralode  # noqa: E402
from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    CountNFE,
    MLPField,
    PairTiming,
    fmt_ms,
    markdown_table,
    setup,
    time_pair,
    write_markdown,
    zero_grads,
)

jax.config.update("jax_enable_x64", False)  # float32 everywhere, as the torch side

DTYPE = torch.float32


# --------------------------------------------------------------------------------------------
# The same dynamics in torch, JAX and numpy (float64 reference).


def jax_mlp_params(field: MLPField) -> list[tuple[Any, Any]]:
    """The torch MLP's weights as JAX arrays ``(Wᵀ, b)``, layer by layer (a copy, same values)."""
    return [
        (jnp.asarray(m.weight.detach().numpy().T), jnp.asarray(m.bias.detach().numpy()))
        for m in field.net
        if isinstance(m, nn.Linear)
    ]


def jax_mlp(t, y, params):
    """``MLPField`` in JAX: Linear, tanh between layers. ``y``: ``(..., n_in)``."""
    for i, (w, b) in enumerate(params):
        if i > 0:
            y = jnp.tanh(y)
        y = y @ w + b
    return y


def numpy_mlp(field: MLPField) -> Callable[[np.ndarray], np.ndarray]:
    """``MLPField`` in float64 numpy, for the reference solution."""
    layers = [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
        for m in field.net
        if isinstance(m, nn.Linear)
    ]

    def f(y: np.ndarray) -> np.ndarray:
        for i, (w, b) in enumerate(layers):
            if i > 0:
                y = np.tanh(y)
            y = y @ w.T + b
        return y

    return f


MU = 2.0


class VanDerPol(nn.Module):
    """``x' = v``, ``v' = μ (1 − x²) v − x`` on states ``(..., 2)``."""

    def __init__(self, mu: float = MU) -> None:
        super().__init__()
        self.mu = mu

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], dim=-1)


def jax_vdp(t, y, args):
    x, v = y[0], y[1]
    return jnp.stack([v, MU * (1 - x * x) * v - x])


def numpy_vdp(y: np.ndarray) -> np.ndarray:
    x, v = y[..., 0], y[..., 1]
    return np.stack([v, MU * (1 - x * x) * v - x], axis=-1)


def reference(f: Callable[[np.ndarray], np.ndarray], y0: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    """``(len(t), *y0.shape)``: scipy's DOP853 at rtol = atol = 1e-12 on the flattened batch, float64."""
    shape = tuple(y0.shape)
    sol = scipy.integrate.solve_ivp(
        lambda _t, y: f(y.reshape(shape)).ravel(),
        (float(t[0]), float(t[-1])),
        y0.double().numpy().ravel(),
        method="DOP853",
        t_eval=t.double().numpy(),
        rtol=1e-12,
        atol=1e-12,
    )
    assert sol.success, sol.message
    return sol.y.T.reshape(len(t), *shape)


# --------------------------------------------------------------------------------------------
# torchode pieces.


class TorchodeMidpoint(ExplicitRungeKutta):
    """The explicit midpoint rule for torchode, which ships Euler, Heun, Dopri5 and Tsit5 only."""

    TABLEAU = TorchodeTableau.from_lists(c=[0.0, 0.5], a=[[], [0.5]], b=[0.0, 1.0], b_low_order=[1.0, 0.0])

    def __init__(self, term=None) -> None:
        super().__init__(term, TorchodeMidpoint.TABLEAU)

    def convergence_order(self) -> int:
        return 2

    def build_interpolation(self, data):
        return torchode.interpolation.LinearInterpolation(data.t0, data.dt, data.y0, data.y1)


TORCHODE_METHODS = {"dopri5": torchode.Dopri5, "tsit5": torchode.Tsit5, "midpoint": TorchodeMidpoint}
DIFFRAX_METHODS = {"dopri5": diffrax.Dopri5, "tsit5": diffrax.Tsit5, "midpoint": diffrax.Midpoint}


def torchode_solver(func: nn.Module, method: str, tol: float | None):
    """A torchode ``AutoDiffAdjoint`` (its default) with an I controller (as diffrax's default PID)
    or, for ``tol=None``, fixed steps."""
    term = torchode.ODETerm(func)
    step = TORCHODE_METHODS[method](term=term)
    controller = (
        torchode.FixedStepController() if tol is None else torchode.IntegralController(atol=tol, rtol=tol, term=term)
    )
    return torchode.AutoDiffAdjoint(step, controller)


def torchode_problem(y0: torch.Tensor, t: torch.Tensor):
    """torchode wants ``(batch, features)`` and per-sample output times ``(batch, n_t)``."""
    return torchode.InitialValueProblem(y0=y0, t_eval=t.to(y0.dtype).expand(y0.shape[0], -1))


# --------------------------------------------------------------------------------------------
# One workload's measurements.


@dataclass
class Workload:
    key: str
    title: str
    ours: dict[str, Callable[[], Any]]  # neuralode variant -> one solve (forward or training step)
    peers: dict[str, Callable[[], Any]]  # peer name -> its solve
    pairings: list[tuple[str, str]]  # (ours variant, peer)
    answers: dict[str, np.ndarray]  # library -> its answer, to compare with the reference
    ref: np.ndarray
    nfe: dict[str, str]  # library -> evaluations text
    bare: dict[str, Callable[[], Any]]  # ours variant -> the same evaluations, bare
    compile_s: float | None = None
    state: torch.Tensor | None = None  # y0, for the cost of one eager operation on the state
    notes: list[str] = field(default_factory=list)
    timings: dict[tuple[str, str], PairTiming] = field(default_factory=dict)
    bookkeeping: dict[str, PairTiming] = field(default_factory=dict)
    replay: dict[str, Callable[[], Any]] = field(default_factory=dict)  # ours variant -> the solve, func replayed
    replayed: dict[str, PairTiming] = field(default_factory=dict)  # solve / the same solve with func replayed


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _jax_compiled(fn: Callable[..., Any], *args) -> tuple[Callable[[], Any], float, Any]:
    """Jit ``fn``, compile it by a first call (timed: trace + compile + one run), return a no-arg
    callable that runs it to completion, the compile seconds, and the first result."""
    jitted = jax.jit(fn)
    start = time.perf_counter()
    out = jax.block_until_ready(jitted(*args))
    compile_s = time.perf_counter() - start
    return (lambda: jax.block_until_ready(jitted(*args))), compile_s, out


def _count(fn: Callable[[CountNFE], Any], func) -> tuple[int, Any]:
    counter = CountNFE(func)
    out = fn(counter)
    return counter.nfe, out


def _diffrax_nfe(stats: dict, stages: int, fsal: bool, vmapped: bool = False) -> str:
    """Evaluations from diffrax's step counts: stages per step (one fewer with FSAL), plus the
    initial evaluation and the initial-step heuristic's one for adaptive solves."""
    steps = np.asarray(stats["num_steps"])
    rejected = np.asarray(stats["num_rejected_steps"])
    per_step = stages - 1 if fsal else stages
    start = 2 if fsal else 0
    if vmapped:
        # A vmapped while loop runs until its slowest sample finishes, evaluating every sample each
        # iteration (finished ones masked): the batched work is set by the maximum.
        return (
            f"≈ {per_step * int(steps.max()) + start} batched (max {int(steps.max())} steps; per sample "
            f"mean {steps.mean():.0f}, {rejected.mean():.1f} rejected)"
        )
    approx = "≈ " if fsal else ""
    return f"{approx}{per_step * int(steps) + start} ({int(steps)} steps, {int(rejected)} rejected)"


def _replayed(solve: Callable[[Any], Any], func) -> Callable[[], Any]:
    """``solve`` (which takes the func to integrate) with a func that hands back, in order, the
    outputs ``func`` gave in one recorded solve: the same steps, stages and outputs, with no
    evaluation work. Its time is the solver's own work alone, away from the evaluations; the
    difference to (solve - bare evaluations) is what the two cost each other when interleaved."""
    outs: list[torch.Tensor] = []

    def record(t, y):
        out = func(t, y)
        outs.append(out.detach().clone())
        return out

    with torch.no_grad():
        solve(record)
    i = [0]

    def replay(t, y):
        out = outs[i[0]]
        i[0] += 1
        return out

    def run():
        i[0] = 0
        out = solve(replay)
        if i[0] != len(outs):
            raise RuntimeError(f"the replayed solve made {i[0]} evaluations, the recorded one {len(outs)}")
        return out

    return run


def _bare_forward(func, y0: torch.Tensor, n: int) -> Callable[[], None]:
    tt = torch.tensor(0.5, dtype=y0.dtype)

    def run() -> None:
        with torch.no_grad():
            for _ in range(n):
                func(tt, y0)

    return run


# --------------------------------------------------------------------------------------------
# The workloads.


def tiny_midpoint() -> Workload:
    torch.manual_seed(0)
    func = MLPField([2, 16, 2])
    y0 = torch.randn(8, 2)
    t = torch.tensor([0.0, 1.0])
    n_steps = 200
    opts = {"step_size": 1.0 / n_steps}

    def nd(f=func):
        with torch.no_grad():
            return neuralode.odeint(f, y0, t, method="midpoint", options=opts)

    def tdq(f=func):
        with torch.no_grad():
            return torchdiffeq.odeint(f, y0, t, method="midpoint", options=opts)

    def tod(f=func):
        with torch.no_grad():
            return (
                torchode_solver(f, "midpoint", None)
                .solve(torchode_problem(y0, t), dt0=torch.full((y0.shape[0],), 1.0 / n_steps))
                .ys.transpose(0, 1)
            )

    params = jax_mlp_params(func)
    y0j = jnp.asarray(y0.numpy())

    def dfx(y0j, params):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(jax_mlp),
            diffrax.Midpoint(),
            0.0,
            1.0,
            1.0 / n_steps,
            y0j,
            args=params,
            saveat=diffrax.SaveAt(ts=jnp.array([0.0, 1.0])),
            stepsize_controller=diffrax.ConstantStepSize(),
        )
        return sol.ys, sol.stats

    dfx_run, compile_s, (dfx_ys, dfx_stats) = _jax_compiled(dfx, y0j, params)
    nfe_nd, ys_nd = _count(nd, func)
    nfe_tdq, ys_tdq = _count(tdq, func)
    nfe_tod, ys_tod = _count(tod, func)
    return Workload(
        "a",
        "(a) MLP 2→16→2, batch 8, midpoint, 200 fixed steps",
        ours={"neuralode": nd},
        peers={"diffrax": dfx_run, "torchode": tod, "torchdiffeq": tdq},
        pairings=[("neuralode", p) for p in ("diffrax", "torchode", "torchdiffeq")],
        answers={"neuralode": _np(ys_nd), "diffrax": _np(dfx_ys), "torchode": _np(ys_tod), "torchdiffeq": _np(ys_tdq)},
        ref=reference(numpy_mlp(func), y0, t),
        nfe={
            "neuralode": str(nfe_nd),
            "diffrax": _diffrax_nfe(dfx_stats, 2, False),
            "torchode": str(nfe_tod),
            "torchdiffeq": str(nfe_tdq),
        },
        bare={"neuralode": _bare_forward(func, y0, nfe_nd)},
        replay={"neuralode": _replayed(nd, func)},
        compile_s=compile_s,
        state=y0,
        notes=[
            "The reference is the exact ODE solution, so every library's error here is the midpoint rule's own.",
            "torchode takes 201 steps: its clock has the state's dtype, and in float32 200 steps of 0.005 end "
            "just short of 1, so it adds a last tiny step (in float64 it takes 200).",
        ],
    )


def _mlp_setup():
    torch.manual_seed(1)
    func = MLPField([32, 128, 128, 32])
    y0 = torch.randn(256, 32)
    t = torch.linspace(0.0, 1.0, 10)
    return func, y0, t


def mlp_forward(method: str) -> Workload:
    func, y0, t = _mlp_setup()
    tol = 1e-6
    kw = dict(rtol=tol, atol=tol, method=method)

    def nd(f=func):
        with torch.no_grad():
            return neuralode.odeint(f, y0, t, **kw)

    def tdq(f=func):
        with torch.no_grad():
            return torchdiffeq.odeint(f, y0, t, **kw)

    def tod(f=func):
        with torch.no_grad():
            return torchode_solver(f, method, tol).solve(torchode_problem(y0, t)).ys.transpose(0, 1)

    params = jax_mlp_params(func)
    y0j = jnp.asarray(y0.numpy())
    tsj = jnp.asarray(t.numpy())

    def dfx(y0j, params):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(jax_mlp),
            DIFFRAX_METHODS[method](),
            0.0,
            1.0,
            None,
            y0j,
            args=params,
            saveat=diffrax.SaveAt(ts=tsj),
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
        )
        return sol.ys, sol.stats

    dfx_run, compile_s, (dfx_ys, dfx_stats) = _jax_compiled(dfx, y0j, params)
    nfe_nd, ys_nd = _count(nd, func)
    nfe_tod, ys_tod = _count(tod, func)
    peers = {"diffrax": dfx_run, "torchode": tod}
    answers = {"neuralode": _np(ys_nd), "diffrax": _np(dfx_ys), "torchode": _np(ys_tod)}
    nfe = {
        "neuralode": str(nfe_nd),
        "diffrax": _diffrax_nfe(dfx_stats, 7, True),
        "torchode": f"{nfe_tod} (per-sample steps)",
    }
    if method in TORCHDIFFEQ_METHODS:
        nfe_tdq, ys_tdq = _count(tdq, func)
        peers["torchdiffeq"] = tdq
        answers["torchdiffeq"] = _np(ys_tdq)
        nfe["torchdiffeq"] = str(nfe_tdq)
    key = "b" if method == "dopri5" else "c"
    return Workload(
        key,
        f"({key}) MLP 32→128→128→32, batch 256, {method} 1e-6, 10 outputs, forward",
        ours={"neuralode": nd},
        peers=peers,
        pairings=[("neuralode", p) for p in peers],
        answers=answers,
        ref=reference(numpy_mlp(func), y0, t),
        nfe=nfe,
        bare={"neuralode": _bare_forward(func, y0, nfe_nd)},
        replay={"neuralode": _replayed(nd, func)},
        compile_s=compile_s,
        state=y0,
    )


def mlp_backward() -> Workload:
    func, y0, t = _mlp_setup()
    tol = 1e-6
    kw = dict(rtol=tol, atol=tol, method="dopri5")
    y0g = y0.clone().requires_grad_(True)
    params_t = list(func.parameters())

    def grads() -> np.ndarray:
        return np.concatenate([_np(y0g.grad).ravel(), *(_np(p.grad).ravel() for p in params_t)])

    def step(solve: Callable[[nn.Module], torch.Tensor], f: nn.Module = func):
        zero_grads(func, y0g)
        solve(f).pow(2).mean().backward()
        return grads()

    solves = {
        "neuralode backprop": lambda f: neuralode.odeint(f, y0g, t, **kw),
        "neuralode adjoint": lambda f: neuralode.odeint_adjoint(f, y0g, t, **kw),
        "neuralode checkpoints auto": lambda f: neuralode.odeint(f, y0g, t, options={"checkpoints": "auto"}, **kw),
        "neuralode checkpoint per step": lambda f: neuralode.odeint(f, y0g, t, options={"checkpoint": True}, **kw),
        "neuralode gauss adjoint": lambda f: neuralode.odeint_adjoint(
            f, y0g, t, adjoint_options={"quadrature": True}, **kw
        ),
        "torchdiffeq backprop": lambda f: torchdiffeq.odeint(f, y0g, t, **kw),
        "torchdiffeq adjoint": lambda f: torchdiffeq.odeint_adjoint(
            f, y0g, t, adjoint_options={"norm": "seminorm"}, **kw
        ),
        "torchode": lambda f: torchode_solver(f, "dopri5", tol).solve(torchode_problem(y0g, t)).ys,
    }
    runs = {name: (lambda s=s: step(s)) for name, s in solves.items()}

    params = jax_mlp_params(func)
    y0j = jnp.asarray(y0.numpy())
    tsj = jnp.asarray(t.numpy())

    def dfx(y0j, params):
        def loss(y0j, params):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(jax_mlp),
                diffrax.Dopri5(),
                0.0,
                1.0,
                None,
                y0j,
                args=params,
                saveat=diffrax.SaveAt(ts=tsj),
                stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
            )  # adjoint: diffrax's default RecursiveCheckpointAdjoint
            return jnp.mean(sol.ys**2), sol.stats

        (_, stats), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(y0j, params)
        return g, stats

    dfx_run, compile_s, ((g_y0, g_params), dfx_stats) = _jax_compiled(dfx, y0j, params)
    # JAX's (Wᵀ, b) back to torch's (W, b) order.
    dfx_grads = np.concatenate(
        [_np(g_y0).ravel(), *(np.concatenate([_np(gw).T.ravel(), _np(gb).ravel()]) for gw, gb in g_params)]
    )

    answers, nfe, counts = {}, {}, {}
    for name, s in solves.items():
        counter = CountNFE(func)
        zero_grads(func, y0g)
        loss = s(counter).pow(2).mean()
        n_forward = counter.nfe
        loss.backward()
        counts[name] = (n_forward, counter.nfe - n_forward)
        nfe[name] = f"{n_forward} + {counter.nfe - n_forward} backward"
        answers[name] = grads()
    answers["diffrax"] = dfx_grads
    nfe["diffrax"] = _diffrax_nfe(dfx_stats, 7, True) + " forward; backward recomputes checkpointed steps"

    # Reference gradients: torchdiffeq's dopri5 in float64 at 1e-11, by backpropagation.
    func64 = MLPField([32, 128, 128, 32], dtype=torch.float64)
    func64.load_state_dict({k: v.double() for k, v in func.state_dict().items()})
    y064 = y0.double().requires_grad_(True)
    torchdiffeq.odeint(func64, y064, t.double(), rtol=1e-11, atol=1e-11).pow(2).mean().backward()
    ref = np.concatenate([_np(y064.grad).ravel(), *(_np(p.grad).ravel() for p in func64.parameters())])

    tt = torch.tensor(0.5)

    def bare_backprop(n: int) -> Callable[[], None]:
        def run() -> None:
            zero_grads(func, y0g)
            sum(func(tt, y0g).pow(2).mean() for _ in range(n)).backward()

        return run

    def bare_adjoint(n_forward: int, n_backward: int) -> Callable[[], None]:
        v = torch.randn_like(y0)

        def run() -> None:
            with torch.no_grad():
                for _ in range(n_forward):
                    func(tt, y0)
            for _ in range(n_backward):
                y = y0.detach().requires_grad_(True)
                with torch.enable_grad():
                    torch.autograd.grad(func(tt, y), (y, *params_t), v)

        return run

    return Workload(
        "d",
        "(d) same as (b), forward + backward of mean(ys²) (gradients of y0 and the weights)",
        ours={
            "backprop": runs["neuralode backprop"],
            "adjoint": runs["neuralode adjoint"],
            "checkpoints auto": runs["neuralode checkpoints auto"],
            "checkpoint per step": runs["neuralode checkpoint per step"],
            "gauss adjoint": runs["neuralode gauss adjoint"],
        },
        peers={
            "diffrax": dfx_run,
            "torchode": runs["torchode"],
            "torchdiffeq backprop": runs["torchdiffeq backprop"],
            "torchdiffeq adjoint": runs["torchdiffeq adjoint"],
        },
        pairings=[
            ("backprop", "diffrax"),
            ("adjoint", "diffrax"),
            ("checkpoints auto", "diffrax"),
            ("checkpoint per step", "diffrax"),
            ("gauss adjoint", "diffrax"),
            ("backprop", "torchode"),
            ("backprop", "torchdiffeq backprop"),
            ("adjoint", "torchdiffeq adjoint"),
        ],
        answers=answers,
        ref=ref,
        nfe=nfe,
        bare={
            "backprop": bare_backprop(sum(counts["neuralode backprop"])),
            "adjoint": bare_adjoint(*counts["neuralode adjoint"]),
        },
        compile_s=compile_s,
        notes=[
            "Answers here are the gradients (y0 and every weight), against torchdiffeq's float64 dopri5 at 1e-11.",
            "Bare evaluations for backprop: the forward evaluations recorded and backpropagated; for the adjoint: "
            "the forward evaluations without a graph, then one vector-Jacobian product per backward evaluation.",
            'The modes that do not keep the whole graph: `options={"checkpoints": "auto"}` (at most 2 + ⌈log₂ n⌉ '
            "stored states, the backward pass re-running the steps between them: exact gradients of the computed "
            "solve, as diffrax's default `RecursiveCheckpointAdjoint`), `options={\"checkpoint\": True}` (each step's "
            "input state kept, its stages recomputed in the backward pass), the backsolve adjoint (`odeint_adjoint`, "
            'seminorm) and the Gauss adjoint (`odeint_adjoint(..., adjoint_options={"quadrature": True})`). For '
            "the two checkpointing modes the backward count is of the re-run steps' evaluations.",
        ],
    )


def van_der_pol() -> Workload:
    torch.manual_seed(2)
    func = VanDerPol()
    y0 = torch.rand(256, 2) * 4 - 2  # (batch, 2), uniform in [-2, 2]²
    t = torch.linspace(0.0, 10.0, 200)
    tol = 1e-5
    kw = dict(rtol=tol, atol=tol, method="dopri5")

    def nd(f=func):
        with torch.no_grad():
            return neuralode.odeint(f, y0, t, **kw)

    def tdq(f=func):
        with torch.no_grad():
            return torchdiffeq.odeint(f, y0, t, **kw)

    def tod(f=func):
        with torch.no_grad():
            return torchode_solver(f, "dopri5", tol).solve(torchode_problem(y0, t)).ys.transpose(0, 1)

    y0j = jnp.asarray(y0.numpy())
    tsj = jnp.asarray(t.numpy())

    def one(y0_1):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(jax_vdp),
            diffrax.Dopri5(),
            0.0,
            10.0,
            None,
            y0_1,
            saveat=diffrax.SaveAt(ts=tsj),
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
            max_steps=16384,
        )
        return sol.ys, sol.stats

    def dfx(y0j):
        ys, stats = jax.vmap(one)(y0j)  # ys: (batch, n_t, 2)
        return jnp.swapaxes(ys, 0, 1), stats

    dfx_run, compile_s, (dfx_ys, dfx_stats) = _jax_compiled(dfx, y0j)
    nfe_nd, ys_nd = _count(nd, func)
    nfe_tdq, ys_tdq = _count(tdq, func)
    nfe_tod, ys_tod = _count(tod, func)
    return Workload(
        "e",
        "(e) Van der Pol μ=2, batch 256, dopri5 1e-5, 200 outputs on [0, 10]",
        ours={"neuralode": nd},
        peers={"diffrax": dfx_run, "torchode": tod, "torchdiffeq": tdq},
        pairings=[("neuralode", p) for p in ("diffrax", "torchode", "torchdiffeq")],
        answers={"neuralode": _np(ys_nd), "diffrax": _np(dfx_ys), "torchode": _np(ys_tod), "torchdiffeq": _np(ys_tdq)},
        ref=reference(numpy_vdp, y0, t),
        nfe={
            "neuralode": f"{nfe_nd} (one step size for the batch)",
            "diffrax": _diffrax_nfe(dfx_stats, 7, True, vmapped=True),
            "torchode": f"{nfe_tod} batched (per-sample steps)",
            "torchdiffeq": f"{nfe_tdq} (one step size for the batch)",
        },
        bare={"neuralode": _bare_forward(func, y0, nfe_nd)},
        replay={"neuralode": _replayed(nd, func)},
        compile_s=compile_s,
        state=y0,
        notes=[
            "Per-sample control (diffrax by vmap, torchode natively) gives each sample its own steps; "
            "neuralode and torchdiffeq step the whole batch with the step its hardest sample needs."
        ],
    )


# --------------------------------------------------------------------------------------------
# Timing and the report.


def _ours_name(variant: str) -> str:
    return "neuralode" if variant == "neuralode" else f"neuralode {variant}"


def measure(w: Workload, pairs: int) -> None:
    for variant, peer in w.pairings:
        w.timings[(variant, peer)] = time_pair(w.ours[variant], w.peers[peer], pairs=pairs, per_side=True)
        print(f"  {w.key}: {_ours_name(variant)} / {peer}: {w.timings[(variant, peer)].ratio_text()}", flush=True)
    for variant, bare in w.bare.items():
        w.bookkeeping[variant] = time_pair(w.ours[variant], bare, pairs=pairs, per_side=True)
        share = 1 - 1 / w.bookkeeping[variant].ratio
        print(f"  {w.key}: {_ours_name(variant)} bookkeeping share {share:.0%}", flush=True)
    for variant, replay in w.replay.items():
        w.replayed[variant] = time_pair(w.ours[variant], replay, pairs=pairs, per_side=True)
        print(
            f"  {w.key}: {_ours_name(variant)} solver alone (func replayed) {1 / w.replayed[variant].ratio:.0%} "
            "of the solve",
            flush=True,
        )


def profile_breakdown(w: Workload, variant: str = "neuralode", solves: int = 20, top: int = 12) -> str:
    """Where a neuralode solve's time goes: cProfile's own-time per function over ``solves`` solves.

    cProfile adds a fixed cost to every Python call, so Python-heavy rows are inflated relative to
    torch kernels; the calls per solve are exact.
    """
    import cProfile
    import pstats

    fn = w.ours[variant]
    fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(solves):
        fn()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())  # own time of every function
    rows = []
    for (file, line, name), (_, ncalls, tottime, _, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        where = name if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{line} `{name}`"
        rows.append([where.replace("<", "‹").replace(">", "›"), f"{ncalls / solves:.0f}", f"{tottime / total:.0%}"])
    return f"### {w.title.split(')')[0]}) ({_ours_name(variant)})\n\n" + markdown_table(
        ["function", "calls per solve", "share of own time"], rows
    )


def _torch_calls(fn: Callable[[], Any]) -> int:
    """Calls of torch functions and tensor methods made by ``fn()`` (a ``TorchFunctionMode`` sees
    each one, nested calls included)."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def _one_op_us(state: torch.Tensor, number: int = 2000) -> float:
    """Median microseconds of one eager ``torch.add(state, state, alpha=0.5)``: the price of one
    elementwise operation of the solver on this state, dispatch included."""
    samples = []
    with torch.no_grad():
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(number):
                torch.add(state, state, alpha=0.5)
            samples.append((time.perf_counter() - start) / number)
    return 1e6 * float(np.median(samples))


def remaining_time(workloads: list[Workload]) -> str:
    """Where the time above the evaluations goes, per forward workload: the solver's own torch calls
    (a solve's calls minus the bare loop's), the bookkeeping time per call, the price of one eager
    operation on the state, and the bare evaluations alone against diffrax's and torchdiffeq's whole
    solves (the floor an eager loop around these evaluations cannot go below)."""
    rows, readings = [], []
    for w in workloads:
        if "neuralode" not in w.bare or w.state is None:
            continue
        book = w.bookkeeping["neuralode"]
        calls = _torch_calls(w.ours["neuralode"]) - _torch_calls(w.bare["neuralode"])
        extra_us = 1e6 * (book.ours_s - book.peer_s)
        op_us = _one_op_us(w.state)
        floor, cells = {}, {}
        for peer in ("diffrax", "torchdiffeq"):
            t = w.timings.get(("neuralode", peer))
            # bare / peer, from the two ratios measured against the same neuralode solve
            floor[peer] = t.ratio / book.ratio if t is not None else None
            cells[peer] = f"{floor[peer]:.2f}×" if t is not None else "—"
        share = 1 - 1 / book.ratio
        alone = 1 / w.replayed["neuralode"].ratio if "neuralode" in w.replayed else None
        rows.append(
            [
                SHORT[w.key],
                f"{calls}",
                f"{extra_us / 1e3:.2f} ms",
                f"{extra_us / max(calls, 1):.1f} µs",
                f"{op_us:.1f} µs",
                f"{share:.0%}",
                f"{alone:.0%}" if alone is not None else "—",
                f"{share - alone:.0%}" if alone is not None else "—",
                cells["diffrax"],
                cells["torchdiffeq"],
            ]
        )
        # What each target would need, in the measured quantities.
        said = []
        target = DIFFRAX_TARGETS[w.key]
        if floor["diffrax"] is not None and floor["diffrax"] > target:
            said.append(
                f"the evaluations alone take {floor['diffrax']:.2f}× diffrax's whole solve, above the "
                f"≤ {target:g}× target, so no eager loop around this func reaches it"
            )
        tdq = w.timings.get(("neuralode", "torchdiffeq"))
        if tdq is not None and tdq.ratio > TORCHDIFFEQ_TARGET:
            f = floor["torchdiffeq"]
            allowed = (TORCHDIFFEQ_TARGET - f) / (tdq.ratio - f)
            said.append(
                f"≤ {TORCHDIFFEQ_TARGET:g}× torchdiffeq needs the bookkeeping cut to {allowed:.0%} of today's "
                f"({allowed * extra_us / 1e3:.2f} ms, about {allowed * extra_us / op_us:.0f} eager operations at "
                f"{op_us:.1f} µs, for {calls} torch calls today)"
                if allowed > 0
                else f"the evaluations alone take {f:.2f}× torchdiffeq's solve, above the ≤ {TORCHDIFFEQ_TARGET:g}× target"
            )
        if w.key == "b":
            allowed_us = 1e6 * book.peer_s / 9  # share < 10 %: bookkeeping < bare / 9
            said.append(
                f"a bookkeeping share under 10 % allows {allowed_us / 1e3:.2f} ms above the evaluations, about "
                f"{allowed_us / op_us:.0f} eager operations at {op_us:.1f} µs each, for {calls} torch calls today"
            )
            if alone is not None:
                said.append(
                    f"of the {share:.0%} bookkeeping, {alone:.0%} of the solve is the solver's own work with the "
                    "evaluations replayed"
                    + (", already above the 10 % allowed," if alone > 0.10 else "")
                    + f" and {share - alone:.0%} is what evaluations and bookkeeping cost each other when "
                    "interleaved"
                )
        per_call = extra_us / max(calls, 1)
        if per_call > 2 * op_us:
            said.append(
                f"the bookkeeping per torch call ({per_call:.1f} µs) is {per_call / op_us:.1f}× the price of one "
                "eager operation on the state, so the loop's Python work and the memory traffic around the "
                "operations weigh more than their number"
            )
        if said:
            readings.append(f"- {SHORT[w.key]}: " + "; ".join(said) + ".")
    for w in workloads:
        # Forward + backward by backpropagation: the floor is the recorded evaluations and their backward pass.
        book = w.bookkeeping.get("backprop")
        if book is None:
            continue
        said = []
        for peer, target in (("diffrax", DIFFRAX_TARGETS[w.key]), ("torchdiffeq backprop", TORCHDIFFEQ_TARGET)):
            t = w.timings.get(("backprop", peer))
            if t is None or t.ratio <= target:
                continue
            f = t.ratio / book.ratio
            said.append(
                f"against {peer} ({t.ratio:.2f}× for ≤ {target:g}×) the evaluations and their backward pass "
                f"alone take {f:.2f}× the peer's whole step"
                + (
                    ", so no solver around them reaches it"
                    if f > target
                    else f"; it needs the solver's own time ({1 - 1 / book.ratio:.0%} of the step) cut to "
                    f"{(target - f) / (t.ratio - f):.0%} of today's"
                )
            )
        if said:
            readings.append(f"- {SHORT[w.key]}, backprop: " + "; ".join(said) + ".")
    return (
        "## Where the remaining time goes\n\n"
        "The solver's own torch calls per solve (every torch function and tensor method a solve calls, minus those "
        "of the bare loop of the same evaluations; counted with a `TorchFunctionMode`), the bookkeeping time "
        "(solve − bare, medians) spread over them, and the measured price of one eager elementwise `torch.add` on "
        "the state. Last two columns: the bare evaluations alone as a multiple of the peer's whole solve (the ratio "
        "to the peer divided by the ratio solve / bare): no eager loop around these evaluations can be faster "
        "than that. The bookkeeping share (solve − bare) / solve is split in two: the solver alone, the same solve "
        "with a func that hands back the recorded outputs of one solve in order (same steps and outputs, no "
        "evaluation work; its time over the solve's, from alternating pairs of its own), and the interaction, the "
        "rest: what evaluations and bookkeeping cost each other when interleaved (its cause was not isolated: "
        "allocations and matrix products of the MLP's sizes interleaved with a replayed solve did not reproduce "
        "it).\n\n"
        + markdown_table(
            [
                "workload",
                "solver torch calls / solve",
                "bookkeeping / solve",
                "per call",
                "one torch.add on the state",
                "bookkeeping share",
                "solver alone (func replayed)",
                "interaction",
                "bare evaluations / diffrax solve",
                "bare evaluations / torchdiffeq solve",
            ],
            rows,
        )
        + (
            "\n\nWhat the targets that are missed would need, in these measured quantities:\n\n" + "\n".join(readings)
            if readings
            else ""
        )
    )


def _share(timing: PairTiming) -> str:
    s = lambda r: 1 - 1 / r  # noqa: E731  (solve − bare) / solve from the ratio solve / bare
    return f"{s(timing.ratio):.0%} [{s(timing.ratio_q1):.0%}–{s(timing.ratio_q3):.0%}]"


#: Issue 14's targets for neuralode / diffrax (same process, one thread); against torchdiffeq ≤ 0.5× everywhere.
DIFFRAX_TARGETS = {"a": 4.0, "b": 1.0, "c": 1.0, "d": 0.5, "e": 2.0}
#: Issue 25's target for (d)'s modes that do not keep the whole graph (adjoints, checkpointing): ≤ 1× diffrax's
#: default (``RecursiveCheckpointAdjoint``), for the best of them.
NON_BACKPROP_TARGET = 1.0
TORCHDIFFEQ_TARGET = 0.5
SHORT = {
    "a": "(a) MLP 2→16→2, midpoint, 200 steps",
    "b": "(b) MLP 32→128→128→32, dopri5, forward",
    "c": "(c) same, tsit5, forward",
    "d": "(d) same as (b), forward + backward",
    "e": "(e) Van der Pol, batch 256",
}


def summary(workloads: list[Workload]) -> str:
    """One row per neuralode variant and workload: its ratio to each peer, the targets, the bookkeeping share."""
    rows = []
    for w in workloads:
        for variant in w.ours:
            cells = []
            for peer in ("diffrax", "torchode", "torchdiffeq"):
                found = [(p, t) for (v, p), t in w.timings.items() if v == variant and p.startswith(peer)]
                cells.append(
                    " ".join(f"{t.ratio_text()}" + (f" ({p.split()[-1]})" if p != peer else "") for p, t in found)
                    or "—"
                )
            target = DIFFRAX_TARGETS[w.key] if variant in ("neuralode", "backprop") else NON_BACKPROP_TARGET
            dfx = w.timings.get((variant, "diffrax"))
            verdict = "—" if dfx is None else ("yes" if dfx.ratio <= target else "no")
            share = _share(w.bookkeeping[variant]) if variant in w.bookkeeping else "—"
            rows.append(
                [
                    SHORT[w.key] + ("" if variant == "neuralode" else f", {variant}"),
                    *cells,
                    f"≤ {target:g}×: {verdict}",
                    share,
                ]
            )
    return (
        "## Summary\n\n"
        "neuralode's time / the peer's, median of alternating pairs [IQR]; < 1: neuralode is faster. Targets from "
        f"issue 14 against diffrax (against torchdiffeq the target is ≤ {TORCHDIFFEQ_TARGET:g}× everywhere; the "
        "forward + backward target ≤ 0.5× is meant for backprop; for the modes that do not keep the whole graph, "
        f"issue 25 asks ≤ {NON_BACKPROP_TARGET:g}× for the best of them). Bookkeeping: (solve − bare evaluations) / solve, "
        "target < 10 % for (b).\n\n"
        + markdown_table(
            ["workload", "/ diffrax", "/ torchode", "/ torchdiffeq", "target vs diffrax", "bookkeeping"], rows
        )
    )


def report(workloads: list[Workload], pairs: int, total_s: float, quick: bool) -> list[str]:
    summary_rows = []
    for w in workloads:
        for (variant, peer), timing in w.timings.items():
            ours = _ours_name(variant)
            summary_rows.append(
                [w.title, f"{ours} / {peer}", timing.ratio_text(), fmt_ms(timing.ours_s), fmt_ms(timing.peer_s)]
            )
    sections = [
        summary(workloads),
        "## Time ratios\n\n"
        "Median of per-pair ratios neuralode / peer, interquartile range in brackets (< 1: neuralode is faster). "
        f"{pairs} alternating pairs per line. The millisecond columns are medians, for scale only.\n\n"
        + markdown_table(["workload", "ratio", "time ratio [IQR]", "neuralode", "peer"], summary_rows),
    ]
    rows = []
    for w in workloads:
        for variant, timing in w.bookkeeping.items():
            ours = _ours_name(variant)
            rows.append(
                [
                    w.title,
                    ours,
                    w.nfe.get("neuralode", w.nfe.get(f"neuralode {variant}", "")),
                    _share(timing),
                    fmt_ms(timing.ours_s),
                    fmt_ms(timing.peer_s),
                ]
            )
    sections.append(
        "## Bookkeeping share\n\n"
        "(solve − the same evaluations in a bare loop) / solve: the solver's own share of the time (median [IQR] "
        "over alternating pairs). The issue's target is under 10 % for the MLP forward solve (b).\n\n"
        + markdown_table(["workload", "solver", "NFE", "bookkeeping share", "solve", "bare evaluations"], rows)
    )
    sections.append(remaining_time(workloads))
    profiles = [profile_breakdown(w) for w in workloads if w.key in ("a", "b", "e")]
    if profiles:
        sections.append(
            "## Where neuralode's time goes\n\n"
            "Own time per function under cProfile (which inflates Python-heavy rows; the calls per solve are exact). "
            "`linear`/`tanh` and the func's own `forward` are the evaluations; the rest is the solver.\n\n"
            + "\n\n".join(profiles)
        )
    for w in workloads:
        acc_rows = []
        base = w.answers.get("neuralode", w.answers.get("neuralode backprop"))
        for lib, ans in w.answers.items():
            err = float(np.max(np.abs(ans - w.ref)))
            diff = float(np.max(np.abs(ans - base)))
            acc_rows.append([lib, w.nfe.get(lib, ""), f"{err:.2e}", f"{diff:.2e}"])
        text = (
            f"## {w.title}\n\n"
            + markdown_table(
                ["library", "evaluations of func", "max abs error vs float64 reference", "max abs diff vs neuralode"],
                acc_rows,
            )
            + f"\n\nscale of the answer: max |reference| = {np.max(np.abs(w.ref)):.3g}. "
            f"diffrax compile (trace + XLA compile + first run), excluded from the timings: {w.compile_s:.2f} s."
        )
        if w.notes:
            text += "\n\n" + "\n".join(f"- {n}" for n in w.notes)
        sections.append(text)
    sections.append(
        "## Notes\n\n"
        "- Evaluations: neuralode, torchode and torchdiffeq are counted (calls of the batched `func`); diffrax's are "
        "worked out from its step counts (`sol.stats`): stages per step, one fewer with FSAL, plus 2 at the start "
        "of an adaptive solve (the first derivative and the initial-step heuristic).\n"
        "- torchode steps every sample with its own step size (its design); for (b)–(d) it still evaluates the "
        "whole batch each step, so its count is of batched evaluations.\n"
        "- diffrax uses its default PID controller (an I controller with these settings) and torchode an "
        "IntegralController; neuralode's default is a PI controller. Different controllers take different steps, "
        "hence different NFE; the answers' errors show each is as accurate as its tolerance asks.\n"
        f"- Whole run: {total_s / 60:.1f} min" + (" (--quick: too few pairs to read the ratios)" if quick else "") + "."
    )
    return sections


HOW_TO = """How to run (from the repository root):

```
make bench-peers
# or by hand:
make .venv/.installed
.venv/bin/pip install -c constraints.txt -c benchmarks/constraints-bench.txt -e '.[bench]'
.venv/bin/python benchmarks/bench_peers.py            # --quick for a smoke run, --pairs N
```

The `bench` extra (JAX's CPU build, diffrax, torchode) is kept out of the library's install and of `make test`.

Machine: a shared 2-core x86 CPU, one thread per library (`torch.set_num_threads(1)`; XLA with
`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`, `OMP_NUM_THREADS=1`). Other work
runs on the same cores, so absolute times are noise: read the ratios of alternating pairs, with their ranges.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 pairs per comparison")
    parser.add_argument("--pairs", type=int, default=41, help="alternating pairs per comparison (default 41)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"directory for peers.md (default {RESULTS_DIR})")
    parser.add_argument("--only", nargs="*", default=None, help="workload letters to run, e.g. --only a e")
    args = parser.parse_args(argv)
    setup(0)
    pairs = 3 if args.quick else args.pairs
    start = time.perf_counter()
    builders = {
        "a": tiny_midpoint,
        "b": lambda: mlp_forward("dopri5"),
        "c": lambda: mlp_forward("tsit5"),
        "d": mlp_backward,
        "e": van_der_pol,
    }
    workloads = []
    for key, build in builders.items():
        if args.only and key not in args.only:
            continue
        print(f"== workload {key}: building, checking answers, compiling diffrax", flush=True)
        w = build()
        measure(w, pairs)
        workloads.append(w)
    sections = report(workloads, pairs, time.perf_counter() - start, args.quick)
    versions = (
        f"Peers: jax {jax.__version__} (CPU), diffrax {diffrax.__version__}, torchode "
        f"{getattr(torchode, '__version__', '1.0.0')}, torchdiffeq {torchdiffeq.__version__}; float32 throughout."
    )
    path = write_markdown(
        args.out / "peers.md",
        "neuralode against diffrax, torchode and torchdiffeq" + (" (quick)" if args.quick else ""),
        HOW_TO + "\n" + versions,
        sections,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
