"""The Rosenbrock step: one Jacobian, one LU factorisation per sample, ``s`` linear solves, no iteration.

For a :class:`~neuralode.solvers.methods.rosenbrock_tableaus.RosenbrockTableau` in transformed form (Hairer & Wanner,
*Solving ODEs II*, IV.7, (7.25)) a step of size ``h`` from ``(t0, y0)`` with ``J = df/dy(t0, y0)`` and
``f_t = df/dt(t0, y0)`` is::

    W   = I / (h gamma) - J                                   (B, n, n), factored once: lu_factor
    u_i = W^-1 [ f(t0 + c_i h, y0 + sum_{j<i} a_ij u_j) + sum_{j<i} (C_ij / h) u_j + h d_i f_t ]
    y1  = y0 + sum_i m_i u_i,    err = sum_i m_err_i u_i

with the state of shape ``(*batch, *event)`` seen as ``(B, n)`` for the solves (``B`` independent systems,
see :mod:`~neuralode.solvers.methods.jacobian`), so each stage is one batched ``lu_solve``. The first stage's
``f`` is the ``f0`` the loop passes in; for FSAL methods (``rosenbrock23``) the last stage is
``f(t0 + h, y1)`` and is returned as the last entry of ``StepResult.k``, after the ``u_i`` that the dense
output (:func:`rosenbrock_dense`) needs.

The step returns values only; whether it is accepted is the controller's decision. The Jacobian at
``(t0, y0)`` is kept while the loop retries from the same point after a rejection (a rejected step changes
``h``, so ``W`` is refactored but ``J`` is not recomputed), as every Rosenbrock code does.

Where the time of a step goes: on the small systems stiff Neural ODEs and chemical kinetics bring, the solver's
own arithmetic is small beside the autograd machinery and the user's function, so a step is laid out to make few
torch calls. ``df/dt`` comes from the same batched backward as ``J`` rather than from a forward-mode evaluation
with dual tensors (:func:`~neuralode.solvers.methods.jacobian.autograd_linearisation`); ``f0`` is the evaluation that
backward differentiates, not one more; without autograd the stage sums are matrix-vector products into the rows
of one buffer rather than a scaled add per coefficient (:func:`_step_in_place`). What is left is the batched
backward itself (``torch.autograd.grad(..., is_grads_batched=True)``, called through the engine with less Python
around it, :func:`~neuralode.solvers.methods.jacobian.batched_vjp`): on the benchmark's systems (Robertson, HIRES,
POLLU; one system and a batch of 256) it forms ``J`` faster than ``n`` separate vector-Jacobian products,
``torch.func.jacrev`` or ``torch.func.jacfwd`` (the last two vmapped per sample for a batch), so it stays.

References:
    E. Hairer, G. Wanner, "Solving Ordinary Differential Equations II: Stiff and Differential-Algebraic
    Problems", 2nd ed., Springer 1996, Section IV.7.
    L. F. Shampine, M. W. Reichelt, "The MATLAB ODE Suite", SIAM J. Sci. Comput. 18 (1997).
    G. Steinebach, "Construction of Rosenbrock-Wanner method Rodas5P ...", BIT Numer. Math. 63, 27 (2023).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch

from ..errors import SolverError
from ..solution import BackwardRecord
from .jacobian import (
    ImplicitStepper,
    Linearisation,
    autograd_linearisation,
    callable_linearisation,
    counted_flat_func,
    identity,
)
from .rosenbrock_tableaus import RosenbrockTableau
from .stepper import StepResult, combine

Func = Callable[[float, torch.Tensor], torch.Tensor]


@cache
def _plan(tab: RosenbrockTableau):
    def nz(coeffs):
        return tuple((j, float(x)) for j, x in enumerate(coeffs) if x != 0.0)

    return (tuple(nz(row) for row in tab.a), tuple(nz(row) for row in tab.C), nz(tab.m), nz(tab.m_err))


_COEFFS: dict = {}


def _coefficient_tensors(tab: RosenbrockTableau, dtype: torch.dtype, device: torch.device):
    """``(a_rows, C_rows, m, m_err)`` for :func:`_step_in_place`: the rows of ``a`` and ``C`` padded with zeros to
    ``s`` entries, and the weights, as tensors of ``dtype`` on ``device``, made once per method, dtype and device
    (slicing them per stage would cost an operation each)."""
    key = (tab, dtype, device)
    out = _COEFFS.get(key)
    if out is None:
        s = tab.stages

        def padded_rows(rows):
            M = torch.zeros(s, s, dtype=dtype, device=device)
            for i, row in enumerate(rows):
                if len(row):
                    M[i, : len(row)] = torch.tensor(row, dtype=dtype, device=device)
            return M.unbind(0)

        out = _COEFFS[key] = (
            padded_rows(tab.a),
            padded_rows(tab.C),
            torch.tensor(tab.m, dtype=dtype, device=device),
            torch.tensor(tab.m_err, dtype=dtype, device=device),
        )
    return out


def factor(J: torch.Tensor, h: float, gamma: float, t: float, stats, n_steps: int):
    """LU factors of ``W = I / (h gamma) - J`` for every block; ``SolverError`` if one is singular."""
    W = identity(J.shape[-1], J.dtype, J.device) * (1.0 / (h * gamma)) - J  # (B, n, n)
    LU, pivots, info = torch.linalg.lu_factor_ex(W)
    stats.n_factorizations += 1
    if bool(info.any()):  # info > 0: a zero pivot (info < 0 flags a bad argument, which cannot occur here)
        b = int((info > 0).nonzero()[0])
        raise SolverError(
            "Singular iteration matrix I/(gamma h) - J",
            t,
            h,
            n_steps,
            f"gamma h = {gamma * h:.6g}: 1/(gamma h) is an eigenvalue of the Jacobian"
            + (f" of sample {b}" if J.shape[0] > 1 else "")
            + "; check options['jacobian'] (a wrong or non-finite Jacobian), or set options['max_step'] to avoid this step size.",
        )
    return LU, pivots


def rosenbrock_step(
    func: Func,
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    h: float,
    tab: RosenbrockTableau,
    lin: Linearisation,
    lu,
    stats,
) -> StepResult:
    """One Rosenbrock step (see the module docstring); ``lu`` are the factors of ``I / (h gamma) - J``.

    Shapes: ``y0``, ``f0``, ``lin.f_t`` and every ``u_i`` have the state's shape; ``lin.J`` is ``(B, n, n)``.
    """
    if not torch.is_grad_enabled():
        return _step_in_place(func, t0, y0, f0, h, tab, lin, lu, stats)
    rows_a, rows_c, m, m_err = _plan(tab)
    LU, pivots = lu
    B, n = lin.J.shape[0], lin.J.shape[-1]
    shape = y0.shape
    f_t = lin.f_t
    u: list[torch.Tensor] = []
    fsal = tab.fsal
    y1 = None
    f_last = None
    s = tab.stages
    for i in range(s):
        if i == 0:
            fi = f0
        else:
            yi = combine(y0, 1.0, rows_a[i], u)
            if fsal and i == s - 1:
                y1 = yi
            fi = func(t0 + tab.c[i] * h, yi)
            if fsal and i == s - 1:
                f_last = fi
        rhs = combine(fi, 1.0 / h, rows_c[i], u)
        if f_t is not None and tab.d[i] != 0.0:
            rhs = torch.add(rhs, f_t, alpha=h * tab.d[i])
        ui = torch.linalg.lu_solve(LU, pivots, rhs.reshape(B, n, 1)).reshape(shape)
        stats.n_linear_solves += 1
        u.append(ui)
    if y1 is None:
        y1 = combine(y0, 1.0, m, u)
    (j0, e0), *rest = m_err
    y_err = u[j0] * e0
    for j, e in rest:
        y_err = torch.add(y_err, u[j], alpha=e)
    # f_last is set exactly when fsal (an FSAL tableau has at least two stages: c[0] = 0 and c[-1] = 1).
    k = tuple(u) + ((f_last,) if f_last is not None else ())
    return StepResult(y1, y_err, k)


def _step_in_place(
    func: Func,
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    h: float,
    tab: RosenbrockTableau,
    lin: Linearisation,
    lu,
    stats,
) -> StepResult:
    """:func:`rosenbrock_step` without autograd: the ``u_i`` are rows of one ``(s, N)`` tensor ``U`` that
    ``lu_solve`` writes into, and every sum over earlier stages is one matrix-vector product
    (``y0 + U[:i]^T a_i``, ``f_i + U[:i]^T C_i / h``, ``y0 + U^T m``, ``U^T m_err``) instead of one scaled add
    per nonzero coefficient. Same equations, so the same values up to the order of summation (rounding).

    The stage states ``y_i`` and the right-hand sides of the solves are written (``out=``) into the rows of one
    scratch tensor allocated per step, and ``lu_solve`` writes each ``u_i`` into its row of ``U``. On a vector
    state (the usual small stiff system) the rows are the state's shape already, so no view or reshape is taken
    per stage: per stage this leaves two ``addmv``, the ``lu_solve`` and ``func``. What outlives the step
    (``y1``, the error estimate and ``U``, which dense output keeps) has storage of its own, so a kept output
    does not keep the scratch alive.

    On a small system a torch call costs more than its arithmetic: the products replace rodas5p's ~50 eager
    additions per step with ~20 operations, and writing them into the scratch's rows rather than into new
    tensors, with no per-stage views or reshapes, saves an allocation and a call per product. The stepper used
    under autograd keeps the out-of-place sums that backpropagation needs.
    """
    a_rows, C_rows, m, m_err = _coefficient_tensors(tab, y0.dtype, y0.device)
    LU, pivots = lu
    B, n = lin.J.shape[0], lin.J.shape[-1]
    shape = y0.shape
    flat = len(shape) == 1  # a vector state: rows of (s, N) tensors are states as they are
    s = tab.stages
    N = B * n
    y0f = y0 if flat else y0.reshape(-1)
    f_t = None if lin.f_t is None else (lin.f_t if flat else lin.f_t.reshape(-1))
    # Zeros, not empty: row i is used with the zero coefficients of the stages after i (0 * 0 adds nothing).
    U = torch.zeros(s, N, dtype=y0.dtype, device=y0.device)  # (s, N): row i is u_i
    UT = U.T  # (N, s)
    u_out = U.view(s, B, n, 1).unbind(0)  # lu_solve writes u_i here
    # Rows [0, s): the stage states (row 0 unused); [s, 2s): the right-hand sides.
    scratch = torch.empty(2 * s, N, dtype=y0.dtype, device=y0.device)
    rows = scratch.unbind(0)  # (N,) each
    rhs_cols = scratch.view(2 * s, B, n, 1).unbind(0)[s:]  # the right-hand sides as lu_solve's operands
    states = rows[:s] if flat else scratch[:s].view(s, *shape).unbind(0)
    fsal = tab.fsal
    y1 = None
    f_last = None
    for i in range(s):
        if i == 0:
            if f_t is not None and tab.d[0] != 0.0:
                torch.add(f0 if flat else f0.reshape(-1), f_t, alpha=h * tab.d[0], out=rows[s])
                rhs = rhs_cols[0]
            else:
                rhs = f0.reshape(B, n, 1)  # a view where f0's layout allows; read only: f0 is the caller's
        else:
            if fsal and i == s - 1:  # y1 itself: storage of its own, it is the next step's state
                y1 = torch.addmv(y0f, UT, a_rows[i])
                yi = y1 = y1 if flat else y1.view(shape)
            else:
                torch.addmv(y0f, UT, a_rows[i], out=rows[i])
                yi = states[i]
            fi = func(t0 + tab.c[i] * h, yi)
            if fsal and i == s - 1:
                f_last = fi
            torch.addmv(fi if flat else fi.reshape(-1), UT, C_rows[i], alpha=1.0 / h, out=rows[s + i])
            if f_t is not None and tab.d[i] != 0.0:
                rows[s + i].add_(f_t, alpha=h * tab.d[i])
            rhs = rhs_cols[i]
        torch.linalg.lu_solve(LU, pivots, rhs, out=u_out[i])
        stats.n_linear_solves += 1
    if y1 is None:
        y1 = torch.addmv(y0f, UT, m)
        y1 = y1 if flat else y1.view(shape)
    y_err = torch.mv(UT, m_err)
    if flat:
        u = U.unbind(0)
    else:
        y_err = y_err.view(shape)
        u = U.view(s, *shape).unbind(0)
    k = tuple(u) + ((f_last,) if f_last is not None else ())  # f_last: set exactly when fsal
    return StepResult(y1, y_err, k)


def rosenbrock_dense(y0: torch.Tensor, y1: torch.Tensor, u, tab: RosenbrockTableau, theta: float) -> torch.Tensor:
    """``(1 - theta) y0 + theta y1 + theta (1 - theta) sum_r theta^r sum_i dense[r][i] u_i``: the method's
    own dense output from the step's ``u_i`` (no evaluation of ``f``)."""
    out = torch.add(y0, y1 - y0, alpha=theta)
    w = theta * (1.0 - theta)
    for i in range(tab.stages):
        coeff = 0.0
        for r, row in enumerate(tab.dense):
            coeff += row[i] * theta**r
        if coeff != 0.0:
            out = torch.add(out, u[i], alpha=w * coeff)
    return out


def resolve_batch_dims(opts, problem) -> int:
    """The number of leading state dimensions that index independent systems (see ``ImplicitOptions``)."""
    jac = opts.method.jacobian
    k = opts.method.batch_dims
    if isinstance(jac, str) and jac == "dense":
        return 0
    shape = problem.shapes[0]
    if problem.is_tuple:
        if k not in (None, 0):
            raise ValueError(
                f"options['batch_dims']={k} cannot be used with a tuple state (its tensors are flattened into one "
                "vector, one system); use batch_dims=0, or stack the tensors into one (batch, n) tensor."
            )
        return 0
    if k is None:
        return 1 if len(shape) >= 2 else 0
    if k > len(shape):
        raise ValueError(
            f"options['batch_dims']={k} exceeds the {len(shape)} dimension(s) of the state of shape {tuple(shape)}; "
            f"use at most {len(shape)} (0 treats the whole state as one system)."
        )
    return k


@dataclass
class RosenbrockState:
    """What a Rosenbrock stepper keeps between attempts (one record, replaced field by field).

    Attributes:
        lin: the last linearisation formed (``J = df/dy``, ``df/dt`` when ``f`` depends on ``t``, and the ``f``
            evaluated with it), ``None`` before the first. The ``auto`` method reads its ``J`` to decide whether
            tsit5 could take rodas5p's step.
        t, y: the point where ``lin`` was formed (``y`` the very tensor). A step from that point reuses it: the
            loop retries from the same ``(t, y)`` after a rejection with another ``h``, so ``W`` is refactored
            but ``J`` is not formed again, as every Rosenbrock code does; a step from anywhere else forms it anew.
        checked: whether the coupling check of the first autograd Jacobian was made (it is made once per solve).
        time_dependent: whether ``f`` depends on ``t`` (``lin.f_t`` present), known after the first autograd
            Jacobian (``None`` before): later ones skip the forward-mode pass for ``df/dt`` when it does not.
    """

    lin: Linearisation | None = None
    t: float | None = None
    y: torch.Tensor | None = None
    checked: bool = False
    time_dependent: bool | None = None


class RosenbrockStepper(ImplicitStepper):
    """The Rosenbrock step (module docstring) with the Jacobian kept in :class:`RosenbrockState` (``state``).

    The step does not depend on the loop's verdict: ``J`` is reused by the point it was taken at, whatever
    happened to the step that used it, so ``settle`` has nothing to do. With ``checkpoint`` (and autograd
    recording) :func:`rosenbrock_stepper` builds :class:`CheckpointedRosenbrockStepper` instead.
    """

    def __init__(self, func, tab: RosenbrockTableau, checkpoint: bool, opts, problem, error=None):
        super().__init__(func, tab, checkpoint, opts, problem, error)
        self.stats = problem.stats
        self.batch_dims = resolve_batch_dims(opts, problem)
        self.jac = opts.method.jacobian if callable(opts.method.jacobian) else None
        self.f_tensor = counted_flat_func(problem)
        self.state = RosenbrockState()

    def _for_stage(self, stage) -> RosenbrockStepper:
        return rosenbrock_stepper(stage, self.tab, self.checkpoint, self.opts, self.problem, self.error)

    def _current(self, t: float, y: torch.Tensor) -> bool:
        st = self.state
        return st.y is y and st.t == t

    def linearise(self, t: float, y: torch.Tensor, f0, h: float, flags=None) -> Linearisation:
        """The linearisation at ``(t, y)``: the record's when it was taken there, else a new one."""
        st, problem = self.state, self.problem
        lin = st.lin  # set whenever st.y is: not None when _current
        if not self.checkpoint and lin is not None and self._current(t, y):
            return lin
        self.stats.n_jac_evals += 1
        tt = problem.time(t, self.side)  # just after a jump (jump_t) on the side the step integrates, as f0
        checked, time_dependent = flags if flags is not None else (st.checked, st.time_dependent)
        if self.jac is not None:
            lin = callable_linearisation(
                self.jac,
                self.f_tensor,
                tt,
                y,
                f0,
                self.batch_dims,
                h,
                problem.unflatten,
                tuple(problem.shapes[0]) if not problem.is_tuple else (sum(problem.sizes),),
            )
        else:
            create_graph = torch.is_grad_enabled() and (y.requires_grad or f0.requires_grad)
            lin = autograd_linearisation(
                self.f_tensor,
                tt,
                y,
                self.batch_dims,
                check_coupling=not checked,
                create_graph=create_graph,
                time_dependent=time_dependent,
                forward=problem.forward_mode,
            )
            st.checked = True
            st.time_dependent = lin.f_t is not None
        st.lin, st.t, st.y = lin, t, y
        return lin

    def step(self, t: float, y: torch.Tensor, f0, h: float, flags=None):
        func, problem, stats, tab = self.func, self.problem, self.stats, self.tab
        if f0 is None:
            # A new Jacobian evaluates func(t, y) anyway; without autograd recording that evaluation is the
            # step's f0 too (the same operations on the same values), one evaluation of func fewer per step.
            # Only where f_tensor is the loop's func (a plain func, the main stage function: no tuple
            # flattening, no jump side, no `perturb` argument), with autograd off (so the Jacobian needs no
            # graph whatever f0 would have required) and the Jacobian not the one kept in the record.
            fuse = (
                self.jac is None
                and func is problem
                and problem.plain
                and not torch.is_grad_enabled()
                and not self._current(t, y)
            )
            lin = self.linearise(t, y, None, h) if fuse else None
            f0 = lin.f if lin is not None and lin.f is not None else func(t, y)
        lin = self.linearise(t, y, f0, h, flags)
        lu = factor(lin.J, h, tab.gamma, t, stats, stats.n_steps)
        return f0, rosenbrock_step(func, t, y, f0, h, tab, lin, lu, stats)


class CheckpointedRosenbrockStepper(RosenbrockStepper):
    """:class:`RosenbrockStepper` with each step under ``torch.utils.checkpoint``: backward keeps the step's inputs
    and recomputes it. The recomputation takes the forward's branches (the coupling check of the first Jacobian,
    ``df/dt`` by forward mode or not), which the record has moved on from by then, so they are passed in.

    The backward pass is counted as :class:`~neuralode.solvers.methods.explicit.CheckpointedStepper` counts it,
    in the solve's :class:`~neuralode.solvers.solution.BackwardRecord` (``Solution.adjoint_stats``)."""

    def __init__(self, func, tab: RosenbrockTableau, checkpoint: bool, opts, problem, error=None):
        super().__init__(func, tab, checkpoint, opts, problem, error)
        if problem.backward is None:
            problem.backward = BackwardRecord()
        self.record: BackwardRecord = problem.backward
        self.forwarding = False

    def step(self, t: float, y: torch.Tensor, f0, h: float, flags=None):
        """The step under checkpointing; ``flags`` is not used: the record's own are passed to the recomputation."""
        from torch.utils.checkpoint import checkpoint as run_checkpointed

        flags = (self.state.checked, self.state.time_dependent)
        self.record.attempt(f0, y)
        self.forwarding = True
        try:
            return run_checkpointed(self._step, t, y, f0, h, flags, use_reentrant=False)
        finally:
            self.forwarding = False

    def _step(self, t: float, y: torch.Tensor, f0, h: float, flags):
        """The step, or outside the forward call backward's re-run of it, counted."""
        if self.forwarding:
            return RosenbrockStepper.step(self, t, y, f0, h, flags)
        return self.record.rerun(self.stats, RosenbrockStepper.step, self, t, y, f0, h, flags)

    def settle(self, accepted: bool) -> None:
        # Every attempt's verdict, its own or one delegated to a stepper for another stage function (which
        # named its inputs in the same record).
        self.record.settle(accepted, self.stats)
        super().settle(accepted)


def rosenbrock_stepper(func, tab: RosenbrockTableau, checkpoint: bool, opts, problem, error=None) -> RosenbrockStepper:
    """A :class:`RosenbrockStepper`; a :class:`CheckpointedRosenbrockStepper` when ``checkpoint`` and autograd is
    recording."""
    cls = CheckpointedRosenbrockStepper if checkpoint and torch.is_grad_enabled() else RosenbrockStepper
    return cls(func, tab, checkpoint, opts, problem, error)


def make_stepper(func: Func, tab: RosenbrockTableau, checkpoint: bool, opts, problem, error=None):
    """The :class:`~neuralode.solvers.methods.stepper.Stepper` of an implicit method for one solve.

    ``func`` evaluates the stages (the loop's problem, or its just-before-a-jump variant); ``problem``
    (:class:`~neuralode.solvers.problem._Problem`) gives the user function, the statistics and the state's
    structure for the Jacobian.
    """
    return rosenbrock_stepper(func, tab, checkpoint, opts, problem, error)
