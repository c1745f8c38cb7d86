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


def differentiated(problem, y0: torch.Tensor, t0: float, stats) -> tuple[tuple[str, ...], tuple] | None:
    """Where autograd records: the names and tensors of the parameters of ``func`` (a ``torch.nn.Module``) that
    require grad, when every tensor a gradient can reach through ``func`` is one of them (checked on the graph of
    one evaluation at ``(t0, y0)``, counted in ``stats.nfe``); ``((), ())`` when no gradient reaches the solve
    (``y0`` and ``func`` need none); ``None`` where the backward run cannot take it (a tensor reached that is not a
    parameter: the caller's fallback, whose backward autograd traces, takes the solve)."""
    func = problem.func
    if not isinstance(func, torch.nn.Module):
        return None
    with torch.enable_grad():
        probe = problem.flat_func()(torch.tensor(t0, dtype=problem.t_dtype, device=problem.device), y0.detach())
    stats.nfe += 1
    reached = leaves(probe) if probe.requires_grad else []
    if not reached and not y0.requires_grad:
        return (), ()
    named = [(name, p) for name, p in func.named_parameters() if p.requires_grad]
    ids = {id(p) for _, p in named}
    if any(id(v) not in ids for v in reached):
        return None
    return tuple(name for name, _ in named), tuple(p for _, p in named)


def make_back(problem, names: tuple[str, ...], tableau: ButcherTableau, stages: bool = False):
    """``back(ys, ts, hs, cot, i_last, *params) -> (a, *g)``: backpropagation through steps ``i_last .. 0``, last
    first. ``ys[k]`` is the state step ``k`` starts from, ``ts[k]`` its stage times and ``hs[k]`` its size; ``cot[k]``
    the cotangent of the state it ends on, or with ``stages`` a pair: that, and the cotangents of its stages
    (``(n, s, N)``, from outputs interpolated in the step). Each step is differentiated by ``torch.func.vjp`` of the
    step (its stages, with ``func``'s parameters passed by name through ``torch.func.functional_call``) at
    ``ys[k]``. Returns the cotangent of the first state and the parameters' gradients, summed over the steps."""
    plan = _plan(tableau)
    module = problem.func

    def step(tn: torch.Tensor, h: torch.Tensor, y: torch.Tensor, *p: torch.Tensor):
        values = dict(zip(names, p))

        def raw(tt, yy):
            out = torch.func.functional_call(module, values, (tt, problem.unflatten(yy)))
            return problem.flatten(out) if problem.is_tuple else out

        y1, k = rk_stages(raw, plan, y, raw(tn[0], y), h, lambda s: tn[s])
        return (y1, torch.stack(k)) if stages else y1

    def back(ys, ts, hs, cot, i_last, *params):
        from torch._higher_order_ops import while_loop

        def cond(i, a, *g):
            return i >= 0

        def body(i, a, *g):
            j = i.reshape(1)
            tn, h, y = ts.index_select(0, j)[0], hs.index_select(0, j)[0], ys.index_select(0, j)[0]
            if stages:
                a = a + cot[0].index_select(0, j)[0]
                wrt = (a, cot[1].index_select(0, j)[0])
            else:
                a = wrt = a + cot.index_select(0, j)[0]
            pull = torch.func.vjp(lambda y_, *p: step(tn, h, y_, *p), y, *params)[1]
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
    cannot be compiled), counting its evaluations and re-run steps in ``Solution.adjoint_stats``."""
    stats = job["stats"]
    with counted_by_solver(job["func"], lambda: stats.nfe):
        out = call(job["entry"], args, stats, "its backward pass runs eagerly instead")
        if out is None:
            out = job["make_back"]()(*args)  # the same loop, run by while_loop's eager implementation
        stats.nfe += n * job["stages"]  # each step's stages, evaluated again inside its vjp
    stats.n_recomputed_steps += n
    return out


def hold(record, states: torch.Tensor) -> None:
    """Count the kept states in ``Solution.adjoint_stats.held_bytes`` (``record``, the solve's
    :class:`~neuralode.solvers.solution.BackwardRecord`)."""
    record.held.add(states)
    record.stats.held_bytes = max(record.stats.held_bytes, record.held.peak)


def output_cotangents(job: dict, cot: torch.Tensor, n: int, y_dtype: torch.dtype):
    """The cotangents of the device run's outputs moved onto what they were formed from: ``(states, stages)``,
    ``(n + 1, N)`` for the states ``y_0 .. y_n`` and ``(n, s, N)`` for each step's stages.

    Output ``i`` lies in the step from state ``ks[i]`` at ``thetas[i]`` (0: a stop arrived at without a step, the
    output is that state). The run formed it as ``y_k + h sum_j b_j(theta) k_j`` (a continuous extension) or
    ``y_k + w_0 (y_(k+1) - y_k) + w_1 k_0 + w_2 k_last`` (the cubic Hermite polynomial), with the weights in float64
    cast to the state's dtype: the same weights carry the cotangents back, each a linear map."""
    ks, thetas, hs = job["ks"], job["thetas"], job["hs"]
    s, N = job["stages"], cot.shape[1]
    states = cot.new_zeros((n + 1, N))
    stage_cot = cot.new_zeros((max(n, 1), s, N))
    states.index_add_(0, ks, cot)
    inside = (thetas != 0) & (ks < n)
    if bool(inside.any()):
        k_in, c_in, theta = ks[inside], cot[inside], thetas[inside]
        h = hs[k_in]
        dense = job["dense"]
        if dense is not None:  # y_k + h sum_j b_j(theta) k_j
            columns = tuple(torch.tensor(col, dtype=torch.float64, device=cot.device) for col in zip(*dense))
            W = _horner(columns, theta[:, None]).to(y_dtype)  # (K, n_dense)
            gamma = (W * h[:, None].to(y_dtype))[:, :, None] * c_in[:, None, :]
            stage_cot[:, : len(dense)].index_add_(0, k_in, gamma)
        else:  # y_k + w0 (y_(k+1) - y_k) + w1 k_0 + w2 k_last
            w0, w1, w2 = (w.to(y_dtype)[:, None] for w in _hermite_weights(theta, h))
            states.index_add_(0, k_in, -w0 * c_in)
            states.index_add_(0, k_in + 1, w0 * c_in)
            stage_cot[:, 0].index_add_(0, k_in, w1 * c_in)
            stage_cot[:, s - 1].index_add_(0, k_in, w2 * c_in)
    return states, stage_cot


class AdaptiveBackprop(torch.autograd.Function):
    """The device run under autograd as one node: forward, what the run computed (given in ``job``): the outputs it
    filled, and the state and derivative it ended on (the host clock goes on from them where the run handed the
    solve over); backward, the compiled reverse run over the accepted steps (:func:`make_back` with ``stages``)."""

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
        states, stage_cot = output_cotangents(job, cot_out.reshape(cot_out.shape[0], -1), n, y0.dtype)
        states[n] += cot_y.reshape(-1)
        if not n:  # no step taken: the outputs are y0, and the derivative handed over is f0
            grads = (torch.zeros_like(p) for p in job["params"])
            return (None, states[0].view(shape), cot_f, *grads)
        stage_cot[n - 1, -1] += cot_f.reshape(-1)  # the derivative handed over: the last step's last stage
        cot = (states[1:].view(n, *shape), stage_cot.view(n, job["stages"], *shape))
        out = reverse(
            job, (job["ys"], job["ts"], job["hs"], cot, torch.tensor(n - 1, device=y0.device), *job["params"]), n
        )
        a = out[0] + states[0].view(shape)
        return (None, a if ctx.needs_input_grad[1] else None, None, *out[1:])
