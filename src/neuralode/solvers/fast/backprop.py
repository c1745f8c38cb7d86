"""Backpropagation through the compiled runs: the kept states, and a compiled reverse run of each step's
vector-Jacobian product as the backward pass.

``while_loop``'s own backward in torch 2.13 differentiates its last iteration alone (:mod:`.device_run`), so the
runs record autograd as one node each (:class:`.grid_run._Backprop` for a fixed grid, :class:`AdaptiveBackprop` for
the device clock). The forward run keeps the state every step starts from; the backward pass is a second compiled
``while_loop`` (:func:`make_back`) over the steps, last first: the cotangent of a step's end state (from the
outputs, plus what the step after it passed back), and of its stages where outputs were interpolated from them,
is pulled back through the step by ``torch.func.vjp`` at the kept state, with ``func``'s parameters passed by name
through ``torch.func.functional_call``, and the parameters' gradients are summed over the steps. That needs the
tensors a gradient may reach to be named: ``func`` must be a ``torch.nn.Module`` whose parameters that require grad
are all that one evaluation's graph reaches (:func:`differentiated`).

The step sizes and times are constants of the backward pass, as they are when autograd records the host clock's
solve (its clock is Python floats, its error ratios read to the host): the gradients are backpropagation's through
the same steps, to rounding. Memory is one state per step (as ``options={"checkpoint": True}``), not every
stage's; the backward pass evaluates each step's stages again inside its vector-Jacobian product.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..counting import counted_by_solver
from ..methods.compiled import rk_stages
from ..methods.interpolation import _hermite_weights, _horner
from ..methods.stepper import _plan
from ..methods.tableau import ButcherTableau
from .graphs import call


def leaves(out: torch.Tensor) -> list[torch.Tensor]:
    """The tensors autograd accumulates gradients into from ``out``'s graph."""
    found, seen, stack = [], set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)
        if isinstance(variable, torch.Tensor):
            found.append(variable)
        stack.extend(f for f, _ in fn.next_functions)
    return found


def reached_parameters(func, evaluate: Callable[[], torch.Tensor], y_requires_grad: bool):
    """Where autograd records: the names and tensors of the parameters of ``func`` (a ``torch.nn.Module``) that
    require grad, when every tensor a gradient can reach through ``func`` is one of them (checked on the graph of
    ``evaluate()``, one evaluation of ``func`` at a detached state); ``((), ())`` when no gradient reaches the solve
    (the state and ``func`` need none); ``None`` where the backward run cannot take it (``func`` not a module, or a
    tensor reached that is not one of its parameters)."""
    if not isinstance(func, torch.nn.Module):
        return None
    with torch.enable_grad():
        probe = evaluate()
    reached = leaves(probe) if probe.requires_grad else []
    if not reached and not y_requires_grad:
        return (), ()
    named = [(name, p) for name, p in func.named_parameters() if p.requires_grad]
    ids = {id(p) for _, p in named}
    if any(id(v) not in ids for v in reached):
        return None
    return tuple(name for name, _ in named), tuple(p for _, p in named)


def differentiated(problem, y0: torch.Tensor, t0: float, stats) -> tuple[tuple[str, ...], tuple] | None:
    """:func:`reached_parameters` for a joint solve: the probe evaluates ``func`` at ``(t0, y0)``, counted in
    ``stats.nfe``; ``None`` sends the solve to the caller's fallback, whose backward autograd traces."""
    if not isinstance(problem.func, torch.nn.Module):
        return None
    t = torch.tensor(t0, dtype=problem.t_dtype, device=problem.device)
    stats.nfe += 1
    return reached_parameters(problem.func, lambda: problem.flat_func()(t, y0.detach()), y0.requires_grad)


def module_field(module: torch.nn.Module, names: tuple[str, ...], flatten: Callable, unflatten: Callable, dtype=None):
    """``field(p) -> raw``: ``module``'s evaluation on the flat state with its parameters ``names`` taking the values
    ``p`` (``torch.func.functional_call``), time cast to ``dtype`` where given (the per-sample clock's ``func`` gets
    time in the state's dtype)."""

    def field(p: tuple[torch.Tensor, ...]) -> Callable:
        values = dict(zip(names, p))

        def raw(tt, yy):
            tt = tt if dtype is None else tt.to(dtype)
            return flatten(torch.func.functional_call(module, values, (tt, unflatten(yy))))

        return raw

    return field


def problem_field(problem, names: tuple[str, ...]) -> Callable:
    """:func:`module_field` for a joint solve's ``func`` on its flat state
    (:class:`~neuralode.solvers.problem._Problem`)."""
    return module_field(problem.func, names, problem.flatten if problem.is_tuple else _same, problem.unflatten)


def _same(x):
    return x


GRID, ADAPTIVE, PER_SAMPLE = "grid", "adaptive", "per_sample"


def make_back(field: Callable, tableau: ButcherTableau, kind: str = GRID):
    """``back(ys, steps, cot, i_last, *params) -> (a, *g)``: backpropagation through steps ``i_last .. 0``, last
    first. ``ys[k]`` is the state step ``k`` starts from; ``steps`` holds each step's stage times ``ts[k]`` and size
    ``hs[k]`` and, per sample, which samples it moved ``moved[k]`` (a round of the per-sample clock: each sample's
    own step, ``y_next = where(moved, y1, y)``). ``cot`` holds the cotangents, each ``(n, ...)``, of what a step
    gives: by ``kind``, :data:`GRID` the state it ends on; :data:`ADAPTIVE` that and its stages (outputs
    interpolated in the step); :data:`PER_SAMPLE` the next state, the step's ``y1`` and its stages. Each step is
    differentiated by ``torch.func.vjp`` of the step (its stages, evaluated by ``field(params)``, see
    :func:`module_field`) at ``ys[k]``. Returns the cotangent of the first state and the parameters' gradients,
    summed over the steps."""
    plan = _plan(tableau)

    def step(per_step: list, y: torch.Tensor, params: tuple):
        tn, h = per_step[0], per_step[1]
        raw = field(params)
        y1, k = rk_stages(raw, plan, y, raw(tn[0], y), h if kind != PER_SAMPLE else h[:, None], lambda s: tn[s])
        if kind == GRID:
            return y1
        if kind == ADAPTIVE:
            return y1, torch.stack(k)
        return torch.where(per_step[2][:, None], y1, y), y1, torch.stack(k)

    def back(ys, steps, cot, i_last, *params):
        from torch._higher_order_ops import while_loop

        cots = cot if isinstance(cot, tuple) else (cot,)

        def cond(i, a, *g):
            return i >= 0

        def body(i, a, *g):
            j = i.reshape(1)
            per_step, y = [x.index_select(0, j)[0] for x in steps], ys.index_select(0, j)[0]
            a = a + cots[0].index_select(0, j)[0]
            wrt = a if kind == GRID else (a, *(c.index_select(0, j)[0] for c in cots[1:]))
            pull = torch.func.vjp(lambda y_, *p: step(per_step, y_, p), y, *params)[1]
            grads = pull(wrt)
            return (i - 1, grads[0], *(x + d for x, d in zip(g, grads[1:])))

        zeros = (torch.zeros_like(ys[0]), *(torch.zeros_like(p) for p in params))
        return tuple(while_loop(cond, body, (i_last.clone(), *zeros))[1:])

    return back


def check_backward(job: dict, what: str) -> None:
    """What a compiled run's backward pass refuses: a second derivative (``create_graph``: the reverse run records
    no graph) and parameters changed in place since the forward pass (as autograd refuses a saved tensor)."""
    if torch.is_grad_enabled():
        raise ValueError(
            f"create_graph=True is not supported through a compiled {what} (options['compile']): its backward pass is "
            "a compiled run that records no graph, so a second derivative would be wrong. Solve without "
            "options['compile'] for second derivatives."
        )
    if [p._version for p in job["params"]] != job["versions"]:
        # What autograd raises for a tensor it saved: the steps would be differentiated at the new values.
        raise RuntimeError(
            f"A parameter of func was modified in place (an optimizer step, say) between a compiled {what} and its "
            "backward pass: its gradient would be taken at the new values. Call backward() before changing the "
            "parameters."
        )


def reverse(job: dict, args: tuple, n: int) -> tuple:
    """Run the compiled reverse run over ``n`` steps (eagerly, by ``while_loop``'s own implementation, where it
    cannot be compiled), counting its evaluations and re-run steps in ``Solution.adjoint_stats`` (per sample, as
    :class:`~neuralode.solvers.solution.PerSampleStats`: each round evaluates the whole batch)."""
    stats = job["stats"]
    per_sample = isinstance(stats.nfe, torch.Tensor)
    with counted_by_solver(job["func"], (lambda: stats.calls) if per_sample else (lambda: stats.nfe)):
        out = call(job["entry"], args, stats, "its backward pass runs eagerly instead")
        if out is None:
            out = job["make_back"]()(*args)  # the same loop, run by while_loop's eager implementation
        evaluations = n * job["stages"]  # each step's stages, evaluated again inside its vjp
        stats.nfe += evaluations
        if per_sample:
            stats.calls += evaluations
            stats.rows_evaluated += evaluations * stats.nfe.shape[0]
    stats.n_recomputed_steps += n
    return out


def hold(record, states: torch.Tensor) -> None:
    """Count the kept states in ``Solution.adjoint_stats.held_bytes`` (``record``, the solve's
    :class:`~neuralode.solvers.solution.BackwardRecord`)."""
    record.held.add(states)
    record.stats.held_bytes = max(record.stats.held_bytes, record.held.peak)


def output_cotangents(job: dict, cot: torch.Tensor, n: int, end_is_y1: bool):
    """The cotangents of a run's outputs moved onto what they were formed from: ``(states, y1s, stages)``,
    ``(n + 1, B, N)`` for the states ``y_0 .. y_n``, ``(n, B, N)`` for each step's ``y1`` and ``(n, s, B, N)`` for
    its stages. ``cot`` is ``(T', B, N)`` (a joint solve: ``B = 1``); ``job["ks"]`` and ``job["thetas"]`` are
    ``(B, T')``, ``job["steps"][1]`` each step's size ``(n, B)``.

    Output ``i`` of sample ``b`` lies in the step from state ``k = ks[b, i]`` at ``theta = thetas[b, i]``. The run
    formed it as that state where ``theta = 0`` (a stop arrived at without a step); as the step's ``y1`` where
    ``theta = 1`` and ``end_is_y1`` (the per-sample run; the joint run interpolates there too); else as
    ``y_k + h sum_j b_j(theta) k_j`` (a continuous extension) or ``y_k + w_0 (y1 - y_k) + w_1 k_0 + w_2 k_last``
    (the cubic Hermite polynomial), its weights formed in float64 and cast to the state's dtype: the same weights
    carry the cotangents back, each a linear map."""
    ks, thetas, hs = job["ks"], job["thetas"], job["steps"][1].reshape(max(n, 1), -1)
    s, (_, B, N) = job["stages"], cot.shape
    states = cot.new_zeros((n + 1, B, N))
    y1s = cot.new_zeros((max(n, 1), B, N))
    stage_cot = cot.new_zeros((max(n, 1), s, B, N))
    b, i = torch.meshgrid(
        torch.arange(B, device=cot.device), torch.arange(cot.shape[0], device=cot.device), indexing="ij"
    )
    k, theta, c = ks.reshape(-1), thetas.reshape(-1), cot[i.reshape(-1), b.reshape(-1)]
    b = b.reshape(-1)
    at_state = (theta == 0) | (k >= n)
    at_end = ~at_state & (theta == 1) if end_is_y1 else torch.zeros_like(at_state)
    inside = ~at_state & ~at_end
    states.index_put_((k[at_state], b[at_state]), c[at_state], accumulate=True)
    y1s.index_put_((k[at_end], b[at_end]), c[at_end], accumulate=True)
    if bool(inside.any()):
        k, b, c, theta = k[inside], b[inside], c[inside], theta[inside]
        h = hs[k, b]
        dense = job["dense"]
        if dense is not None:  # y_k + h sum_j b_j(theta) k_j
            columns = tuple(torch.tensor(col, dtype=torch.float64, device=cot.device) for col in zip(*dense))
            W = (_horner(columns, theta[:, None]) * h[:, None]).to(cot.dtype)  # (K, n_dense)
            j = torch.arange(len(dense), device=cot.device)[None, :].expand(len(k), -1)
            where = (k[:, None].expand_as(j), j, b[:, None].expand_as(j))
            stage_cot.index_put_(where, W[:, :, None] * c[:, None, :], accumulate=True)
            states.index_put_((k, b), c, accumulate=True)
        else:  # y_k + w0 (y1 - y_k) + w1 k_0 + w2 k_last
            w0, w1, w2 = (w.to(cot.dtype)[:, None] for w in _hermite_weights(theta, h))
            states.index_put_((k, b), c - w0 * c, accumulate=True)
            y1s.index_put_((k, b), w0 * c, accumulate=True)
            stage_cot.index_put_((k, torch.zeros_like(k), b), w1 * c, accumulate=True)
            stage_cot.index_put_((k, torch.full_like(k, s - 1), b), w2 * c, accumulate=True)
    return states, y1s, stage_cot


class AdaptiveBackprop(torch.autograd.Function):
    """The device run under autograd as one node: forward, what the run computed (given in ``job``): the outputs it
    filled, and the state and derivative it ended on (the host clock goes on from them where the run handed the
    solve over); backward, the compiled reverse run over the accepted steps (:func:`make_back`, :data:`ADAPTIVE`)."""

    @staticmethod
    def forward(ctx, job: dict, y0: torch.Tensor, f0: torch.Tensor, *params: torch.Tensor):
        ctx.job = job
        ctx.save_for_backward(y0)
        return job["outputs"], job["y_last"], job["f_last"]

    @staticmethod
    def backward(ctx, cot_out: torch.Tensor, cot_y: torch.Tensor, cot_f: torch.Tensor):
        job = ctx.job
        check_backward(job, "adaptive solve")
        (y0,) = ctx.saved_tensors
        n, shape = job["n"], y0.shape
        states, y1s, stage_cot = output_cotangents(job, cot_out.reshape(cot_out.shape[0], 1, -1), n, False)
        states, stage_cot = states[:, 0], stage_cot[:, :, 0]  # one clock: B = 1; no output is y1 itself
        states[n] += cot_y.reshape(-1)
        if not n:  # no step taken: the outputs are y0, and the derivative handed over is f0
            grads = (torch.zeros_like(p) for p in job["params"])
            return (None, states[0].view(shape), cot_f, *grads)
        # The Hermite polynomial's y1 is the step's end state.
        states[1:] += y1s[:, 0]
        stage_cot[n - 1, -1] += cot_f.reshape(-1)  # the derivative handed over: the last step's last stage
        cot = (states[1:].view(n, *shape), stage_cot.view(n, job["stages"], *shape))
        out = reverse(job, (job["ys"], job["steps"], cot, torch.tensor(n - 1, device=y0.device), *job["params"]), n)
        a = out[0] + states[0].view(shape)
        return (None, a if ctx.needs_input_grad[1] else None, None, *out[1:])


class SampleBackprop(torch.autograd.Function):
    """The per-sample device run under autograd as one node: forward, the outputs the run filled (given in
    ``job``, ``(T - 1, B, N)``); backward, the compiled reverse run over its recorded rounds (:func:`make_back`,
    :data:`PER_SAMPLE`: each round moves the samples whose step it took, ``y_next = where(moved, y1, y)``)."""

    @staticmethod
    def forward(ctx, job: dict, y0: torch.Tensor, *params: torch.Tensor):
        ctx.job = job
        ctx.save_for_backward(y0)
        return job["outputs"]

    @staticmethod
    def backward(ctx, cot_out: torch.Tensor):
        job = ctx.job
        check_backward(job, "per-sample adaptive solve")
        (y0,) = ctx.saved_tensors
        n = job["ys"].shape[0]
        states, y1s, stage_cot = output_cotangents(job, cot_out, n, True)
        if not n:
            return (None, states[0], *(torch.zeros_like(p) for p in job["params"]))
        cot = (states[1:], y1s, stage_cot)
        out = reverse(job, (job["ys"], job["steps"], cot, torch.tensor(n - 1, device=y0.device), *job["params"]), n)
        return (None, out[0] + states[0] if ctx.needs_input_grad[1] else None, *out[1:])
