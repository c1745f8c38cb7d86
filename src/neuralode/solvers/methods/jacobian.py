"""Jacobians ``df/dy`` (and ``df/dt``) for the implicit methods, per sample of a batch.

A state of shape ``(*batch, *event)`` whose leading ``batch_dims`` dimensions index independent systems
(the usual Neural-ODE batch: ``(B, n)`` with ``batch_dims = 1``) has a block-diagonal Jacobian. Only the
blocks are computed and stored, as one tensor of shape ``(B, n, n)`` with ``B = prod(batch)`` and
``n = prod(event)``; every linear solve is then ``B`` independent ``n x n`` solves
(``torch.linalg.lu_factor`` / ``lu_solve`` on the stacked blocks), so cost and memory are linear in ``B``
and no ``(B n) x (B n)`` matrix is ever formed. ``batch_dims = 0`` (``jacobian="dense"``) is the case
``B = 1``: one coupled system of ``n = y.numel()`` unknowns.

How the blocks come from autograd: with ``f = func(t, y)`` evaluated once, the ``n`` vector-Jacobian
products with cotangents ``E_j`` that are 1 at event index ``j`` of *every* sample give, for independent
samples, row ``j`` of every block at once: ``(E_j^T df/dy)[b, k] = df_{b j} / dy_{b k}``. The ``n`` products run
as one batched backward (``torch.autograd.grad(..., is_grads_batched=True)``, a vmap over the cotangents,
not over the user's function, so any differentiable ``func`` works). The same backward carries one more
cotangent, 1 on sample 0's outputs only: if the samples are independent its gradient vanishes exactly on
every other sample; if not, the solve stops with an error that says to pass ``jacobian="dense"``
(checked on the first Jacobian of every solve, at the cost of one extra cotangent).

``df/dt`` (needed by non-autonomous problems) is a Jacobian-vector product in ``t``. Without autograd
recording, for one system (``B = 1``) it comes from the same backward with ``t`` one more input, and a batch
whose previous Jacobian did not depend on ``t`` is tested the same way (see :func:`autograd_linearisation`);
otherwise it is computed by forward-mode AD in the same evaluation (``t`` a dual number; the double-backward
trick ``d/dv [v . df/dt] = df/dt`` for functions without forward-mode derivatives); a ``func`` that does not depend on ``t`` yields ``None`` (no
term) at no extra evaluation. A ``func`` that turns ``t`` into a Python number (``float(t)``) hides its
time dependence from autograd: the Rosenbrock methods then lose order on non-autonomous problems.

With autograd recording (backpropagation through the solve), the blocks are computed with
``create_graph=True``, so the gradient of the solution includes the dependence of ``J`` on the state and
the parameters (Rosenbrock methods use the exact ``J``; leaving it out would not be the derivative of the
discrete solution).

:class:`ImplicitStepper` is the frame the implicit families' steppers (Rosenbrock, ESDIRK, Radau, the fixed-grid
implicit methods, ``auto``) share around these Jacobians: the loop's calling convention, the stage function, and
the delegation of a step onto a jump of ``func`` to a fresh stepper of the same family.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.overrides import has_torch_function

from .stepper import Stepper, StepResult

_engine_run_backward: Callable[..., tuple[torch.Tensor, ...]] | None
try:  # the autograd engine's entry point behind torch.autograd.grad (torch >= 2.3)
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - older or rearranged torch: the public call below is used
    _engine_run_backward = None


class Linearisation(NamedTuple):
    """``J`` as ``(B, n, n)`` blocks and ``f_t`` shaped like the state (``None``: ``func`` ignores ``t``);
    ``f``: ``func(t, y)`` from the evaluation that gave ``J`` (detached; ``None`` where not kept)."""

    J: torch.Tensor
    f_t: torch.Tensor | None
    f: torch.Tensor | None = None


def batch_shape(shape: torch.Size, batch_dims: int) -> tuple[int, int]:
    """``(B, n)``: the number of independent systems and the unknowns of each."""
    return math.prod(shape[:batch_dims]), math.prod(shape[batch_dims:])


# Constant tensors of the Jacobian and the iteration matrix, made once per shape, dtype and device: an identity
# and the cotangents cost four small operations that every Rosenbrock step would repeat. Only small
# ones are kept (the per-operation overhead they save matters only for small systems), so the cache stays small.
_CONSTANTS: dict = {}
_CONSTANT_MAX_NUMEL = 1 << 14


def _constant(key: tuple, numel: int, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()``, kept under ``key`` when it has at most ``_CONSTANT_MAX_NUMEL`` elements. Callers only read it.

    Not kept when made under ``torch.inference_mode``: an inference tensor cannot take part in a later
    differentiable solve (the cotangents enter the graph of a Jacobian built with ``create_graph``)."""
    out = _CONSTANTS.get(key)
    if out is None:
        out = build()
        if numel <= _CONSTANT_MAX_NUMEL and not torch.is_inference_mode_enabled():
            _CONSTANTS[key] = out
    return out


def identity(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``(n, n)`` identity (shared: read it, never write to it)."""
    return _constant(("eye", n, dtype, device), n * n, lambda: torch.eye(n, dtype=dtype, device=device))


def _cotangents(n: int, B: int, probe: bool, shape: torch.Size, dtype: torch.dtype, device: torch.device):
    """``(rows, *shape)`` cotangents for the batched backward: row ``j < n`` is 1 at event index ``j`` of every
    sample; with ``probe``, one more row that is 1 on sample 0's outputs only (the coupling check)."""

    def build():
        cot = identity(n, dtype, device).unsqueeze(1).expand(n, B, n)  # (n, B, n)
        if probe:
            extra = torch.zeros(1, B, n, dtype=dtype, device=device)
            extra[0, 0] = 1.0
            cot = torch.cat([cot, extra])
        return cot.reshape(n + probe, *shape)

    return _constant(("cot", n, B, probe, tuple(shape), dtype, device), (n + probe) * B * n, build)


def batched_vjp(
    f: torch.Tensor, inputs: tuple[torch.Tensor, ...], cot: torch.Tensor, *, retain_graph: bool, create_graph: bool
) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad(f, inputs, cot, is_grads_batched=True, allow_unused=True, ...)``, the same backward
    with less Python around it.

    ``cot`` is ``(rows, *f.shape)``: row ``r`` is one cotangent, and each result is ``(rows, *input.shape)``
    (``None`` for an input ``f`` does not reach). The public call wraps the engine in argument normalisation,
    shape checks and a general-purpose vmap (pytree flattening of the arguments, per-call closures); here the
    one cotangent tensor gets its batch dimension directly, as that vmap does, and the engine runs the same
    batched backward, so the values are the same bits. On a small system that Python is a large share of the
    call, and a Jacobian is formed on every Rosenbrock step. Tensor subclasses and active
    ``__torch_function__`` modes take the public call, which dispatches to them; so does a torch without the
    engine entry point.
    """
    if _engine_run_backward is None or type(f) is not torch.Tensor or has_torch_function((f, cot, *inputs)):
        return torch.autograd.grad(
            f,
            inputs,
            cot,
            is_grads_batched=True,
            retain_graph=retain_graph,
            create_graph=create_graph,
            allow_unused=True,
        )
    rows = cot.shape[0]
    level = torch._C._vmapmode_increment_nesting()
    try:
        grads = _engine_run_backward(
            (f,), (torch._add_batch_dim(cot, 0, level),), retain_graph, create_graph, inputs, True, False
        )  # allow_unused, accumulate_grad
        return tuple(None if g is None else torch._remove_batch_dim(g, level, rows, 0) for g in grads)
    finally:
        torch._C._vmapmode_decrement_nesting()


def _time_derivative(f: torch.Tensor, tt: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor | None:
    """``df/dt`` by the double-backward trick; ``None`` when ``f`` does not depend on ``tt``.

    ``y`` (the state ``f`` was evaluated at) is passed as an input of both backward calls although its
    gradient is not wanted: the autograd engine stops its graph search at inputs, and without it the search
    would run through the state's whole history (every earlier step of a differentiable solve), which made
    each Jacobian cost time proportional to the number of steps taken so far.
    """
    v = torch.zeros_like(f, requires_grad=True)
    gt = torch.autograd.grad(f, (tt, y), v, create_graph=True, allow_unused=True, retain_graph=True)[0]
    if gt is None or not gt.requires_grad:
        return None
    f_t = torch.autograd.grad(gt, (v, y), create_graph=create_graph, allow_unused=True)[0]
    return None if f_t is None else f_t


def _evaluate_with_time_tangent(func, tt: torch.Tensor, yv: torch.Tensor):
    """``(f, df/dt)`` from one evaluation of ``func`` with ``t`` a forward-mode dual number (tangent 1).

    Forward mode gives ``df/dt`` (``None`` when ``func`` ignores ``t``) in the same evaluation that the
    Jacobian's backward uses, and unlike a reverse-mode derivative in ``t`` it never searches the state's
    autograd history (in a differentiable solve that history is every earlier step, and a reverse pass to
    ``t`` walks all of it: the cost of each Jacobian would grow with the step count). ``df/dt`` stays
    differentiable with respect to the state and the parameters.

    Returns ``(f, f_t, None)``, or, for a ``func`` using an operation without a forward-mode derivative,
    ``(f, None, tv)`` with ``f`` evaluated at a time leaf ``tv`` that requires grad, for the double-backward
    trick (:func:`_time_derivative`).
    """
    import torch.autograd.forward_ad as fwAD

    try:
        with fwAD.dual_level():
            td = fwAD.make_dual(tt.detach(), torch.ones_like(tt))
            if fwAD.unpack_dual(td).tangent is None:
                # Forward AD is switched off (PyTorch does so inside an autograd.Function's forward, where
                # odeint_adjoint's forward solve runs): every tangent would read as "func ignores t".
                raise RuntimeError("forward-mode AD is disabled here")
            out = func(td, yv)
            if not isinstance(out, torch.Tensor):
                return out, None, None
            f, f_t = fwAD.unpack_dual(out)
        return f, f_t, None
    except (NotImplementedError, RuntimeError):
        tv = tt.detach().requires_grad_(True)
        return func(tv, yv), None, tv


def _dual_leaf(y: torch.Tensor) -> torch.Tensor:
    """``y`` as a leaf that requires grad and keeps ``y``'s forward-mode tangent (a dual tensor whose primal is
    the leaf), so that a Jacobian taken by backpropagation to it carries its own tangent."""
    import torch.autograd.forward_ad as fwAD

    primal, tangent = fwAD.unpack_dual(y)
    leaf = primal.detach().requires_grad_(True)
    return leaf if tangent is None else fwAD.make_dual(leaf, tangent)


def _detach_keep_tangent(x: torch.Tensor) -> torch.Tensor:
    """``x`` without its autograd graph, keeping its forward-mode tangent (also detached)."""
    import torch.autograd.forward_ad as fwAD

    primal, tangent = fwAD.unpack_dual(x)
    return primal.detach() if tangent is None else fwAD.make_dual(primal.detach(), tangent.detach())


def _check_independent_of_y(func, tt: torch.Tensor, y: torch.Tensor, f: torch.Tensor) -> None:
    """Raise unless ``f = func(tt, y)``, whose autograd graph does not reach ``y``, is independent of ``y``.

    An output with no autograd path to ``y`` is one of two things that autograd cannot tell apart:

    * ``func`` does not depend on ``y`` (a forcing ``f(t)``, a constant): ``J = 0`` exactly;
    * ``func`` depends on ``y`` through something autograd does not follow (``y.detach()``, ``y.item()``,
      a NumPy round trip, ``torch.no_grad`` inside ``func``): ``J`` is not zero, and a zero ``J`` would
      make the Newton iterations of the implicit methods and the Rosenbrock stages silently wrong.

    One more evaluation tells them apart: ``func`` at ``y + d``, with ``d`` a fixed pseudo-random direction
    of forward-difference size (``sqrt(eps) (1 + |y|)`` per component). An unchanged output (bit for bit) is
    exactly what a forward-difference Jacobian along ``d`` would find, so ``J = 0`` is taken; a changed one
    raises. A dependence that cancels along ``d`` or hides below the rounding of that step would go
    unnoticed; a random direction makes the first a coincidence. torchdiffeq (0.2.5 and its development
    version) forms no Jacobian by autograd: its fixed-grid implicit methods iterate Broyden's method from
    ``J = 0``, which needs no graph, so a ``y``-independent ``func`` works there too.
    """
    gen = torch.Generator().manual_seed(0x5EED)
    d = torch.rand(y.shape, generator=gen, dtype=torch.float64).add_(0.5).to(y.device, y.real.dtype)  # in [0.5, 1.5)
    yd = y.detach()
    step = math.sqrt(torch.finfo(y.dtype).eps)
    with torch.no_grad():
        f_probe = func(tt.detach(), yd + step * (1.0 + yd.abs()) * d)
    same = isinstance(f_probe, torch.Tensor) and f_probe.shape == f.shape
    if same and torch.equal(torch.nan_to_num(f_probe), torch.nan_to_num(f.detach())):
        return
    raise TypeError(
        "options['jacobian']: func(t, y) is not differentiable by autograd with respect to y: its output changes "
        "with y but has no autograd graph to y (y.detach(), y.item(), a NumPy round trip or torch.no_grad() "
        "inside func), so its Jacobian cannot be computed; pass options={'jacobian': jac} with jac(t, y) "
        "returning the Jacobian, or make func use torch operations on y."
    )


def autograd_linearisation(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tt: torch.Tensor,
    y: torch.Tensor,
    batch_dims: int,
    *,
    check_coupling: bool,
    create_graph: bool,
    time_dependent: bool | None = None,
    forward: bool = False,
) -> Linearisation:
    """``df/dy`` blocks and ``df/dt`` at ``(tt, y)`` from one evaluation of ``func`` and one batched backward.

    Args:
        func: ``func(t, y)`` with ``t`` a 0-dim tensor and ``y`` shaped like the state; called once.
        tt: the time, a 0-dim tensor of the state's dtype.
        y: the state; the Jacobian is differentiable with respect to it (and to parameters of ``func``)
            when autograd is recording.
        batch_dims: leading dimensions of ``y`` that index independent systems.
        check_coupling: verify that the samples are independent (see the module docstring).
        create_graph: keep the Jacobian differentiable (the caller knows whether the state or the
            parameters of ``func`` require gradients).
        time_dependent: whether ``func`` depended on ``t`` at the previous Jacobian of this solve (``None``:
            no previous one). Only a hint for choosing how ``df/dt`` is formed (see below); the result does
            not depend on it.
        forward: forward-mode derivatives are carried through the solve (``y`` or the parameters of
            ``func`` are ``torch.autograd.forward_ad`` dual tensors): ``J`` and ``df/dt`` are then built with a
            graph (``create_graph``) from a ``y`` that keeps its tangent, so that they carry their own
            tangents ``dJ/dy . y_dot + dJ/dtheta . theta_dot`` (forward over reverse). Without them the
            tangent of a Rosenbrock step would treat ``J`` as a constant, which is not the derivative of the
            discrete solution (rodas5p: 1.5e-5 off the backpropagated derivative at rtol 1e-6).

    Without ``create_graph``, ``df/dt`` comes from the same backward as ``J`` where that is exact: ``t`` is a
    reverse-mode leaf, one of the backward's inputs, and row ``j``'s gradient in ``t`` is
    ``sum_b df_bj/dt``: ``df/dt`` itself for one system (``B = 1``), and for ``B > 1`` at least a test of
    whether ``func`` uses ``t`` at all (``None``: unreachable). So ``B = 1`` never needs forward mode, and a
    batch whose previous Jacobian showed no time dependence is evaluated without the dual number; should
    ``t`` become reachable, the forward-mode evaluation is done after all (one more evaluation of ``func``,
    once). Forward mode costs several plain evaluations (dual tensors in every operation), a large share of
    a small system's Jacobian. The returned
    ``f`` lets a caller reuse this evaluation as the step's ``f0``.

    A ``func`` whose output has no autograd path to ``y`` gets ``J = 0`` when it does not depend on ``y``
    (one more evaluation shows it; see :func:`_check_independent_of_y`).

    Raises:
        TypeError: when ``func``'s output depends on ``y`` but has no autograd graph to it.
        ValueError: when ``check_coupling`` finds samples that depend on each other.
    """
    B, n = batch_shape(y.shape, batch_dims)
    graph_wanted = create_graph  # by backpropagation through the solve; forward mode needs one only here
    create_graph = create_graph or forward
    reverse_t = not create_graph and (B == 1 or time_dependent is False)
    with torch.enable_grad():
        if create_graph and y.requires_grad:
            yv = y
        elif forward:
            yv = _dual_leaf(y)
        else:
            yv = y.detach().requires_grad_(True)
        if reverse_t:
            tr = tt.detach().requires_grad_(True)
            f, f_t, tv = func(tr, yv), None, None
        else:
            f, f_t, tv = _evaluate_with_time_tangent(func, tt, yv)
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"func(t, y) must return a torch.Tensor; got {type(f).__name__}.")
        probe = check_coupling and B > 1
        rows = n + probe
        if f.requires_grad:
            cot = _cotangents(n, B, probe, y.shape, y.dtype, y.device)  # (rows, *y.shape)
            inputs = (yv, tr) if reverse_t else (yv,)
            G, *G_t = batched_vjp(f, inputs, cot, retain_graph=not reverse_t, create_graph=create_graph)
        else:  # no graph at all: f depends on neither y, t nor a parameter that autograd follows
            G, G_t, tv = None, [None], None
        if G is None:
            # No autograd path from y to f: J = 0 if f does not depend on y, else an error (see below).
            _check_independent_of_y(func, tt, y, f)
            G = torch.zeros(rows, *y.shape, dtype=y.dtype, device=y.device)
        G = G.reshape(rows, B, n)
        if rows > n and bool((G[n, 1:] != 0).any()):
            raise ValueError(
                f"options['jacobian']='batched' treats the {B} samples along the first {batch_dims} dimension(s) "
                "of the state as independent systems, but func couples them (sample 0's derivative depends on "
                "other samples). Pass options={'jacobian': 'dense'} for one coupled system, or set "
                "options['batch_dims'] to the number of leading dimensions that really are independent."
            )
        J = G[:n].permute(1, 0, 2)  # (B, n, n): J[b, j, k] = d f_bj / d y_bk
        if reverse_t and G_t[0] is not None:
            if B > 1:  # t reachable now but not at the previous Jacobian: per-sample df/dt by forward mode
                return autograd_linearisation(
                    func, tt, y, batch_dims, check_coupling=False, create_graph=False, time_dependent=True
                )
            f_t = G_t[0][:n].reshape(y.shape)  # (rows,) = (n,): d f_j / dt
        if tv is not None and f.requires_grad:
            f_t = _time_derivative(f, tv, yv, create_graph)
    if not create_graph:
        J = J.detach()
        f_t = None if f_t is None else f_t.detach()
        return Linearisation(J, f_t, f.detach())
    if not graph_wanted:  # forward mode alone: keep the tangents, drop the graph built to get them
        return Linearisation(_detach_keep_tangent(J), None if f_t is None else _detach_keep_tangent(f_t))
    return Linearisation(J, f_t)


def checked_jacobian(
    jac: Callable,
    tt: torch.Tensor,
    y: torch.Tensor,
    batch_dims: int,
    unflatten: Callable,
    user_shape: tuple[int, ...],
) -> torch.Tensor:
    """The user's ``jac(tt, y)`` as ``(B, n, n)`` blocks, checked.

    Raises:
        TypeError, ValueError: when ``jac`` returns something other than a tensor of shape ``(B, n, n)``
            (or ``(n, n)`` for one system) of the state's dtype.
    """
    B, n = batch_shape(y.shape, batch_dims)
    J = jac(tt, unflatten(y))
    if not isinstance(J, torch.Tensor):
        raise TypeError(f"options['jacobian'] callable must return a torch.Tensor; got {type(J).__name__}.")
    expected = [(B, n, n)] + ([(n, n)] if B == 1 else [])
    if tuple(J.shape) not in expected:
        want = " or ".join(str(e) for e in expected)
        raise ValueError(
            f"options['jacobian'] callable returned shape {tuple(J.shape)}; for a state of shape {user_shape} with "
            f"batch_dims={batch_dims} it must return {want} (B = {B} independent systems of n = {n} unknowns, "
            "J[b, i, j] = d f_bi / d y_bj)."
        )
    if J.dtype != y.dtype:
        raise TypeError(
            f"options['jacobian'] callable returned dtype {J.dtype}; it must return the state's dtype {y.dtype}."
        )
    return J.reshape(B, n, n)


def callable_linearisation(
    jac: Callable,
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tt: torch.Tensor,
    y: torch.Tensor,
    f0: torch.Tensor,
    batch_dims: int,
    h_scale: float,
    unflatten: Callable,
    user_shape: tuple[int, ...],
) -> Linearisation:
    """The user's ``jac(t, y)``, checked (:func:`checked_jacobian`), as ``(B, n, n)`` blocks; ``df/dt`` by
    autograd where ``func`` allows it (one evaluation of ``func``), else by a forward difference (two).

    Raises:
        TypeError, ValueError: as :func:`checked_jacobian`.
    """
    J = checked_jacobian(jac, tt, y, batch_dims, unflatten, user_shape)
    with torch.enable_grad():
        # One evaluation with t and y traced: a func that autograd can follow gives df/dt (or shows that it
        # ignores t); one it cannot (its output needs no grad) gets a forward difference instead.
        tv = tt.detach().requires_grad_(True)
        yd = y.detach().requires_grad_(True)
        f = func(tv, yd)
        if f.requires_grad:
            f_t = _time_derivative(f, tv, yd, False)
            return Linearisation(J, None if f_t is None else f_t.detach())
    # func is opaque to autograd: forward difference in t with a step of sqrt(eps) relative to t and h.
    delta = math.sqrt(torch.finfo(y.dtype).eps) * max(abs(float(tt)), abs(h_scale), 1e-8)
    with torch.no_grad():
        f1 = func(torch.full_like(tt, float(tt) + delta), y)
        f_t = (f1 - f0) / delta
    return Linearisation(J, None if not bool((f_t != 0).any()) else f_t)


def counted_flat_func(problem) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(tt, y)`` on the solver's flat state with a tensor time, counted in ``problem.stats.nfe``: the
    function the iterative implicit steppers (ESDIRK, Radau) evaluate and linearise."""
    stats = problem.stats

    def f_tensor(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        stats.nfe += 1
        if problem.is_tuple:
            return torch.cat([o.reshape(-1) for o in problem.func(tt, problem.unflatten(y))])
        return problem.func(tt, y)

    return f_tensor


def linearise(
    problem,
    jac,
    f_tensor,
    t: float,
    y: torch.Tensor,
    f0: torch.Tensor,
    batch_dims: int,
    h: float,
    check_coupling: bool,
    side: int = 0,
) -> Linearisation:
    """``J`` at ``(t, y)`` for an iterative implicit stepper, counted in ``problem.stats.n_jac_evals``: from the
    user's ``jac`` callable when given (checked against the state's shape), else by autograd, with a graph
    when the state or ``f0`` carry one (backpropagation through the solve), checking the declared batch
    coupling when ``check_coupling`` (the solve's first Jacobian). ``side`` +1: the step starts at a jump of
    ``func`` (``jump_t``), whose Jacobian is taken just after it, on the side the step integrates, as ``f0``."""
    problem.stats.n_jac_evals += 1
    tt = problem.time(t, side)
    if jac is not None:
        user_shape = tuple(problem.shapes[0]) if not problem.is_tuple else (sum(problem.sizes),)
        return callable_linearisation(jac, f_tensor, tt, y, f0, batch_dims, h, problem.unflatten, user_shape)
    create_graph = torch.is_grad_enabled() and (y.requires_grad or f0.requires_grad)
    return autograd_linearisation(
        f_tensor,
        tt,
        y,
        batch_dims,
        check_coupling=check_coupling,
        create_graph=create_graph,
        forward=problem.forward_mode,
    )


class ImplicitStepper(Stepper):
    """The frame the implicit families' steppers share: the loop's calling convention and the stage function.

    A subclass is built with ``(func, tab, checkpoint, opts, problem, error)``: ``func`` evaluates the stages (the
    loop's problem), ``problem`` (:class:`~neuralode.solvers.problem._Problem`) gives the user function, the
    statistics and the state's structure for the Jacobian, ``error`` the solve's error norm (``None`` on a fixed
    grid). It provides ``step(t, y, f0, h) -> (f0, StepResult)`` (a method, or a function it binds per solve)
    and, when it keeps state that depends on the loop's decision, ``_settle(accepted)``.

    A step whose stages the loop evaluates with another function (a step onto a jump of ``func``, whose stages
    see the side they come from) is taken by a new stepper of the same class built for that function, as a first
    step: nothing of this stepper's record is used or changed by it, and the loop's verdict on it is not this
    stepper's to settle (``delegated``).
    """

    # Set by the families that linearise through jacobian_at (Rosenbrock, ESDIRK, Radau): the user's Jacobian
    # callable (None: autograd), the counted stage function on the flat state, the number of batch dimensions.
    jac: Callable[..., Any] | None
    f_tensor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batch_dims: int
    # The family's step, step(t, y, f0, h) -> (f0, StepResult) with f0 None when the loop has none.
    step: Callable[[float, torch.Tensor, torch.Tensor | None, float], tuple[torch.Tensor, StepResult]]

    def __init__(self, func, tab, checkpoint: bool, opts, problem, error=None):
        self.func, self.tab, self.checkpoint, self.opts, self.problem, self.error = (
            func,
            tab,
            checkpoint,
            opts,
            problem,
            error,
        )
        self.delegated = False  # the last attempt was taken by a stepper built for another stage function
        # +1 while the step being taken starts just after a jump of func: f0 and the Jacobian are taken on that side
        self.side = 0

    def __call__(self, side, t, y, f0, h, stage=None, memory=None):
        if f0 is None and side:  # just after a jump: the steps below take f0 at (t, y) only
            f0 = self.problem(t, y, side)
        if stage is None or stage is self.func:
            self.delegated = False
            self.side = side
            return self.step(t, y, f0, h)
        self.delegated = True
        other = self._for_stage(stage)
        other.side = side
        return other.step(t, y, f0, h)

    def _for_stage(self, stage) -> ImplicitStepper:
        """A new stepper of this family for the stage function ``stage``, built as this one was."""
        return type(self)(stage, self.tab, self.checkpoint, self.opts, self.problem, self.error)

    def jacobian_at(self, t: float, y: torch.Tensor, f0: torch.Tensor, h: float, check_coupling: bool) -> Linearisation:
        """:func:`linearise` at ``(t, y)`` with this stepper's ``jac``, counted ``f_tensor`` and batch layout (the
        iterative families', ESDIRK and Radau), on the side of ``func`` the step starts on."""
        return linearise(self.problem, self.jac, self.f_tensor, t, y, f0, self.batch_dims, h, check_coupling, self.side)

    def settle(self, accepted: bool) -> None:
        if not self.delegated:
            self._settle(accepted)

    def _settle(self, accepted: bool) -> None:
        """What the family keeps of the loop's verdict on its own last attempt; nothing by default."""
