"""What a solve returns: :class:`Solution`, its counters :class:`SolverStats` and event records
(the dense output that :meth:`Solution.evaluate` reads is :mod:`~neuralode.solvers.dense`'s); and what the drivers hand the api
(:class:`LoopResult`) or one another (:class:`Handover`, a fast path's end state for the loop)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

import torch

TensorOrTuple = torch.Tensor | tuple[torch.Tensor, ...]

Y_co = TypeVar("Y_co", bound=TensorOrTuple, covariant=True)
"""The type of a solution's states: ``torch.Tensor`` for a tensor ``y0``, a tuple of tensors for a tuple."""


@dataclass
class SolverStats:
    """Counters of one solve, or of the backward passes of a gradient mode that runs its own.

    ``Solution.stats`` count the work of the solve call itself, as it returns: evaluations made afterwards
    (backward re-running the steps of a solve with ``options={"checkpoint": True}``, a dense output
    evaluated later) are not added. A gradient mode with a backward pass of its own (the adjoints, both
    checkpointings) counts that pass apart, in ``Solution.adjoint_stats``: there ``nfe`` counts the
    evaluations of ``func`` made during backward, ``n_accepted``/``n_rejected`` the backward solve's steps
    (the adjoints), ``n_recomputed_steps`` the forward steps re-run (the checkpointings) and ``held_bytes``
    the memory held for the backward pass. Counters add up over backward passes (a second ``backward`` of a
    retained graph adds its work); ``held_bytes`` is the most over them.

    Attributes:
        nfe: evaluations of ``func`` (including the initial-step heuristic's one).
        n_accepted: accepted steps.
        n_rejected: rejected steps (always 0 for fixed-step methods).
        last_step: the size of the last step taken (signed; ``nan`` if no step was taken).
        next_step: the step the controller proposed after the last one (adaptive methods), a
            good ``first_step`` for a solve that continues from the end of this one.
        n_event_evals: evaluations of event functions (one per event per accepted step, plus
            the root finder's).
        n_events: events located (terminal and non-terminal).
        compile_s: seconds the first call of a compiled step took (``options={"compile": ...}``),
            compilation included; 0 when nothing was compiled in this solve.
        n_compiles: graphs ``torch.compile`` compiled during this solve (``options={"compile": ...}``): first
            compilations and recompilations (a guard that failed: a new dtype, a changing ``int`` attribute of
            ``func``); 0 when every graph came from the cache of an earlier solve.
        n_jac_evals: Jacobians ``df/dy`` formed (implicit methods; a batch of per-sample blocks
            counts once). Each autograd Jacobian also counts one evaluation of ``func`` in ``nfe``.
        n_factorizations: LU factorisations of the iteration matrix (one per step attempt of a
            Rosenbrock method; a batch of blocks counts once).
        n_linear_solves: linear solves with a factored iteration matrix (one per stage).
        n_recomputed_steps: in ``Solution.stats``: with ``options={"checkpoints": K}``, the steps the backward
            pass will re-run (each step but the last, which the forward pass takes with its graph, at least once,
            to differentiate it; more with a small ``K``), as planned by the forward pass; with ``options={"checkpoint": True}``, the steps taken under checkpointing
            that a backward pass reaching them re-runs, once each: the accepted steps, and the rejected attempts
            whose evaluated ``f(t, y)`` the retry reuses (:class:`BackwardRecord`); 0 otherwise. In
            ``Solution.adjoint_stats``: the steps the backward passes re-ran, counted as they run.
        max_stored_states: with ``options={"checkpoints": K}``, the most checkpoints (a state and the
            derivative its step reuses) held at once in the forward and the planned backward pass, at most
            ``K``; 0 otherwise.
        held_bytes: in ``Solution.adjoint_stats``: the most bytes of tensors the gradient mode itself held for
            its backward pass at one time (:class:`HeldStorages`: each storage once, at its full size). What
            it counts, by mode: per-step checkpointing, the inputs of every checkpointed step (state, reused
            derivative, multistep history); recursive checkpointing, the stored checkpoints (states and reused
            derivatives) and the adjoints it carries from step to step (of the state, of the reused derivative,
            the parameter-gradient sums); the backsolve adjoint, the saved outputs and the backward state
            ``(y, a, *gθ)``; the interpolating adjoint, the saved outputs, the forward solve's dense-output
            tables and ``(a, *gθ)``; the Gauss adjoint, the same with ``a`` and the parameter-gradient sums, and
            the dense output of the backward interval being summed. Not counted: the transient graph of the one
            step (or evaluation) being differentiated, and the backward solver's own stages, which autograd and
            the solver free step by step (``AdjointChoice.eval_bytes`` estimates one evaluation's graph). 0 in
            ``Solution.stats``.
    """

    nfe: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    last_step: float = math.nan
    next_step: float = math.nan
    n_event_evals: int = 0
    n_events: int = 0
    compile_s: float = 0.0
    n_compiles: int = 0
    n_jac_evals: int = 0
    n_factorizations: int = 0
    n_linear_solves: int = 0
    n_recomputed_steps: int = 0
    max_stored_states: int = 0
    held_bytes: int = 0

    @property
    def n_steps(self) -> int:
        """Steps attempted: accepted plus rejected."""
        return self.n_accepted + self.n_rejected


@dataclass
class PerSampleStats:
    """The counters of a per-sample solve: those of :class:`SolverStats` that are per sample are tensors of
    shape ``(B,)`` here, the others are the solve's as there.

    ``nfe[i]`` counts the evaluations of ``func`` made while sample ``i`` was unfinished (its own
    work: accepted and rejected attempts, the initial-step heuristic); ``n_accepted``,
    ``n_rejected``, ``last_step`` and ``next_step`` are sample ``i``'s own, as are ``n_event_evals``
    and ``n_events``. It is a record of its own rather than a :class:`SolverStats`, whose counters are
    numbers: code that reads a solve's statistics as numbers is not handed tensors unawares.

    As ``Solution.adjoint_stats`` of the per-sample adjoint, the counters of its backward solve (``nfe[i]``
    the evaluations made for sample ``i``), added up over backward passes, and ``held_bytes``, as for
    :class:`SolverStats`: the saved outputs (and event times and states), the backward state ``[y, a]`` and
    the parameter-gradient sums.

    Attributes:
        rows_evaluated: rows of the state passed to ``func`` in total (``sum`` of the batch size
            over all calls), finished samples included.
        calls: calls of ``func`` (each on the whole, possibly compacted, batch).
    """

    nfe: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor
    last_step: torch.Tensor
    next_step: torch.Tensor
    n_event_evals: torch.Tensor
    n_events: torch.Tensor
    compile_s: float = 0.0
    n_compiles: int = 0
    n_jac_evals: int = 0
    n_factorizations: int = 0
    n_linear_solves: int = 0
    n_recomputed_steps: int = 0
    max_stored_states: int = 0
    held_bytes: int = 0
    rows_evaluated: int = 0
    calls: int = 0

    @property
    def n_steps(self) -> torch.Tensor:
        """Steps attempted by each sample: accepted plus rejected."""
        return self.n_accepted + self.n_rejected

    @classmethod
    def zeros(cls, B: int, device) -> PerSampleStats:
        """The counters of a solve of ``B`` samples before its first evaluation (steps NaN)."""
        z = torch.zeros(B, dtype=torch.long, device=device)
        nan = torch.full((B,), math.nan, dtype=torch.float64, device=device)
        return cls(
            nfe=z.clone(),
            n_accepted=z.clone(),
            n_rejected=z.clone(),
            last_step=nan.clone(),
            next_step=nan.clone(),
            n_event_evals=z.clone(),
            n_events=z.clone(),
        )

    @property
    def wasted_fraction(self) -> float:
        """Fraction of the rows evaluated by ``func`` that belonged to finished samples."""
        if self.rows_evaluated == 0:
            return 0.0
        return 1.0 - float(self.nfe.sum()) / self.rows_evaluated


def _add_storages(sizes: dict[tuple[int, int], int], objs: tuple[object, ...]) -> None:
    """``sizes[(device, storage)] = storage bytes`` for the tensors in ``objs``, and in the tuples and lists in
    them (a NamedTuple such as a step's result, an Adams history); anything else is passed over."""
    stack = list(objs)
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            try:
                storage = x.untyped_storage()
                sizes[(x.get_device(), storage.data_ptr())] = storage.nbytes()
            except (RuntimeError, NotImplementedError):  # a tensor without a storage of its own (a wrapper subclass)
                sizes[(-2, id(x))] = x.nelement() * x.element_size()
        elif isinstance(x, (tuple, list)):
            stack.extend(x)


class HeldStorages:
    """The storages of the tensors a gradient mode holds for its backward pass, each counted once at its full
    size (``untyped_storage().nbytes()``: a view keeps its whole storage alive), with the most bytes held.

    Plain arithmetic on tensors the mode already holds: no allocator sampling, no hooks. ``add`` and
    ``discard`` take tensors, ``None`` or tuples and lists of them; :attr:`peak` is the most :attr:`nbytes`
    plus ``carried()`` seen at a call of :meth:`note` (which ``add`` makes). ``carried``: the bytes of what
    the mode holds apart, replaced as it goes (the adjoints it carries from step to step).
    """

    __slots__ = ("_bytes", "peak", "carried")

    def __init__(self, carried: Callable[[], int] | None = None) -> None:
        self._bytes: dict[tuple[int, int], int] = {}
        self.peak = 0
        self.carried = carried

    def add(self, *objs: object) -> None:
        """Hold the tensors in ``objs``; notes the new total."""
        _add_storages(self._bytes, objs)
        self.note()

    def discard(self, *objs: object) -> None:
        """No longer hold the tensors in ``objs``."""
        gone: dict[tuple[int, int], int] = {}
        _add_storages(gone, objs)
        for key in gone:
            self._bytes.pop(key, None)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return sum(self._bytes.values())

    def note(self, extra: int = 0) -> int:
        """Note the bytes held now, with ``carried()`` and ``extra`` (held apart for a while, e.g. one backward
        interval's dense output), in :attr:`peak`; returns that sum."""
        now = self.nbytes + extra + (self.carried() if self.carried is not None else 0)
        self.peak = max(self.peak, now)
        return now


class BackwardRecord:
    """The backward passes of a solve whose gradient mode runs one of its own, as ``Solution.adjoint_stats``
    shows them (:attr:`stats`), with the storages held for them (:attr:`held`).

    For per-step checkpointing (``options={"checkpoint": True}``) it is shared by the solve's checkpointed
    steppers: each attempt names its inputs (:meth:`attempt`), the loop's verdict keeps an accepted one's
    (:meth:`settle`: the step will be re-run by backward, counted in the forward counters' ``n_recomputed_steps``
    as the plan), and each re-run in backward is counted as it runs (:meth:`rerun`). A rejected attempt that
    evaluated its first derivative itself is re-run too: the loop retries from the same point reusing that
    derivative, an output of the attempt's checkpoint (``torch.utils.checkpoint`` stops that re-run once the
    derivative is formed again); its inputs are the retry's.
    """

    __slots__ = ("stats", "held", "pending", "evaluates_f0")

    def __init__(self, stats: SolverStats | None = None) -> None:
        self.stats = SolverStats() if stats is None else stats
        self.held = HeldStorages()
        self.pending: tuple[object, ...] | None = None
        self.evaluates_f0 = False

    def attempt(self, f0: torch.Tensor | None, *inputs: object) -> None:
        """The first derivative the step just attempted under checkpointing was given (``None``: it evaluates
        it) and its other inputs (tensors, ``None``, tuples of tensors)."""
        self.pending = (f0, *inputs)
        self.evaluates_f0 = f0 is None

    def settle(self, accepted: bool, counted: SolverStats) -> None:
        """The loop's verdict on the last attempt: an accepted step's inputs are held until backward re-runs
        it, and ``counted`` (the forward counters) plans that re-run; so is a rejected one's whose evaluated
        derivative the retry reuses."""
        if self.pending is not None:
            if accepted:
                self.held.add(*self.pending)
            if accepted or self.evaluates_f0:
                counted.n_recomputed_steps += 1
        self.pending = None

    def rerun(self, counted: SolverStats, step: Callable[..., Any], *args: Any) -> Any:
        """``step(*args)`` re-run by backward: the work ``counted`` (the counters the step's evaluations go to)
        grows by is added to :attr:`stats`, with one recomputed step, and the inputs held, all of them
        still there when the first step is re-run, to ``held_bytes``."""
        out = self.stats
        out.held_bytes = max(out.held_bytes, self.held.nbytes)
        nfe, jac, lu, lin = counted.nfe, counted.n_jac_evals, counted.n_factorizations, counted.n_linear_solves
        try:
            return step(*args)
        finally:  # a re-run torch.utils.checkpoint stops once it has what backward needs counts as one
            out.nfe += counted.nfe - nfe
            out.n_jac_evals += counted.n_jac_evals - jac
            out.n_factorizations += counted.n_factorizations - lu
            out.n_linear_solves += counted.n_linear_solves - lin
            out.n_recomputed_steps += 1


def storage_bytes(*objs: object) -> int:
    """Bytes of the distinct storages of the tensors in ``objs`` (as :class:`HeldStorages` counts them)."""
    sizes: dict[tuple[int, int], int] = {}
    _add_storages(sizes, objs)
    return sum(sizes.values())


@dataclass(frozen=True)
class EventRecord:
    """One occurrence of an event during a solve.

    Attributes:
        t: the event time, a 0-dim tensor of the dtype of the output times ``t``;
            differentiable (implicit function theorem) when the solve is.
        y: the state at the event, before any reset (a tensor, or a tuple like ``y0``).
        index: which event of the ``events`` list fired.
        element: the index (a tuple, as ``numpy.unravel_index`` gives it) of the element of the
            event function's output whose sign change was located.
        terminal: whether the event ended the solve.
    """

    t: torch.Tensor
    y: TensorOrTuple
    index: int
    element: tuple[int, ...]
    terminal: bool


@dataclass(frozen=True)
class AdjointChoice:
    """The gradient mode of a solve called with ``adjoint=`` (:func:`~neuralode.solvers.adjoint.modes.choose_adjoint`
    returns it for ``adjoint="auto"``), and why.

    Attributes:
        mode: the mode that runs: ``"backprop"``, ``"checkpoint"``, ``"checkpoints"``, ``"backsolve"``,
            ``"interpolating"`` or ``"gauss"``.
        reason: one sentence naming the rule that chose it, with the figures it compared.
        estimated_bytes: the memory each mode would hold for backward, in bytes, by mode name (the estimates of
            :mod:`~neuralode.solvers.adjoint.modes`); empty when the mode was asked for by name.
        memory_budget: the budget the estimates were compared with, in bytes (``None`` when asked for by name).
        steps: the expected number of accepted steps, and how it was found (``"grid"``, ``"previous solve"``,
            ``"probe"``); ``None`` when asked for by name.
        eval_bytes: bytes one evaluation of ``func`` saves for backward (measured at ``(t[0], y0)``).
        params: ``P``, the elements of ``func.parameters()`` that require grad (0 for a plain function).
        state: ``m``, the elements of the state.
    """

    mode: str
    reason: str
    estimated_bytes: dict[str, int] = field(default_factory=dict)
    memory_budget: int | None = None
    steps: tuple[int, str] | None = None
    eval_bytes: int | None = None
    params: int | None = None
    state: int | None = None


@dataclass(frozen=True)
class Solution(Generic[Y_co]):
    """The result of :func:`~neuralode.solvers.api.solve`.

    Attributes:
        ts: the output times reached: the ``t`` passed in, shortened to the times before a
            terminal event when one ended the solve.
        ys: the states at ``ts``: a tensor of shape ``(len(ts), *y0.shape)``, or a tuple of such
            tensors when ``y0`` is a tuple. Times after an event with a reset show the reset
            state.
        stats: function evaluations and step counts (:class:`PerSampleStats`, with ``(B,)`` counters, for a
            solve with ``options={"per_sample": True}``).
        method: the name of the method used.
        adjoint_stats: the counters of the backward passes of a gradient mode that runs its own, filled in as
            ``backward`` runs (:class:`SolverStats`: backward evaluations of ``func``, steps re-run, bytes held):
            the adjoints (:func:`~neuralode.solvers.adjoint.backsolve.solve_adjoint`, ``adjoint="backsolve"``,
            ``"interpolating"``, ``"gauss"``; a :class:`PerSampleStats` for the per-sample adjoint), recursive
            checkpointing (``options={"checkpoints": K}``) and per-step checkpointing
            (``options={"checkpoint": True}``, whose re-runs ``torch.utils.checkpoint`` makes: for the methods that
            checkpoint their steps, the explicit ones and Rosenbrock's; with ``method="auto"`` its rodas5p steps).
            ``None`` for backpropagation, whose backward pass is autograd's through the recorded solve (its memory
            is what ``adjoint="auto"`` estimates, ``adjoint_choice.estimated_bytes["backprop"]``), and for methods
            that accept ``options["checkpoint"]`` without checkpointing their steps (the ESDIRK, Radau and fixed
            implicit methods).
        events: the located events in time order (:class:`EventRecord`); empty without events.
        dense: the kept interpolants when the solve ran with ``options={"dense": True}``.
        adjoint_choice: for a solve called with ``adjoint=`` other than ``"backprop"``, the gradient mode that ran
            and why (:class:`AdjointChoice`; with ``adjoint="auto"`` the rule's figures); ``None`` otherwise.
    """

    ts: torch.Tensor
    ys: Y_co
    stats: SolverStats | PerSampleStats
    method: str
    adjoint_stats: SolverStats | PerSampleStats | None = None
    events: tuple[EventRecord, ...] = field(default_factory=tuple)
    # a dense.DenseOutput, or with options['per_sample'] a dense.PerSampleDense: either is called on the times
    dense: Callable[[torch.Tensor], Y_co] | None = field(default=None, repr=False)
    adjoint_choice: AdjointChoice | None = None

    @property
    def terminated(self) -> bool:
        """Whether a terminal event ended the solve."""
        return bool(self.events) and self.events[-1].terminal

    def evaluate(self, t: torch.Tensor) -> Y_co:
        """The solution at any times of the solved span, from the kept dense output.

        Each time is served by the interpolant of the step that contains it (at a step's end, the step
        that ends there; at an event with a reset, the state before the reset): the rule of
        :class:`~neuralode.solvers.dense.PieceTable`, the same on both clocks.

        Args:
            t: a 0-dim tensor (returns one state) or a 1-D tensor of times (returns states
                stacked along a new first dimension). With ``options["per_sample"]`` a 0-dim ``t``
                gives every sample at that time, a ``(K,)`` one ``(K, B, ...)``, and a ``(B, K)`` one
                each sample at its own times.

        Raises:
            ValueError: when the solve did not keep its dense output (solve with
                ``options={"dense": True}`` or use :func:`~neuralode.solvers.api.odeint_dense`),
                or a time lies outside the solved span (beyond the rounding of its ends).
            TypeError: ``t`` is not a floating-point tensor.
        """
        if self.dense is None:
            raise ValueError(
                "Solution.evaluate needs the dense output, which this solve did not keep; "
                "pass options={'dense': True} to solve, or use neuralode.odeint_dense."
            )
        return self.dense(t)

    def __call__(self, t: torch.Tensor) -> Y_co:
        """``solution(t)`` is ``solution.evaluate(t)``: what torchdiffeq's ``odeint_dense`` returns."""
        return self.evaluate(t)


class LoopResult(NamedTuple):
    """What a driver of one clock (the host clock, the compiled chunks) hands back to
    :func:`~neuralode.solvers.api.solve`, which builds the :class:`Solution` from it."""

    ys: list[torch.Tensor]  # flat states at the output times reached, y0 first
    out_steps: list[tuple[float, int]]  # (step size, accepted steps) that produced each output
    events: list[EventRecord]
    terminal: bool


class Handover(NamedTuple):
    """Where a fast path stopped short of the last output time, for the host clock to go on from.

    The lean fixed grid (:func:`~neuralode.solvers.fast.fixed_grid.run`) stops at a step within
    rounding of its start, which the loop takes by its own rule; the loop then starts from exactly
    this state, so the solve's states are those of the loop alone. The device run
    (:mod:`~neuralode.solvers.fast.device_run`) stops before an attempt the host clock decides (an error to
    raise, the stiffness watch) and hands over its step and the controller's memory too.
    """

    t: float  # the time reached
    y: torch.Tensor  # the flat state there
    f0: torch.Tensor | None  # f(t, y) when known (FSAL, or a cubic interpolant's end), else None
    i_stop: int  # index of the next stop to land on
    i_out: int  # index of the next output time; ys holds the states up to it
    ys: list[torch.Tensor]  # flat states at the output times reached, y0 first
    out_steps: list[tuple[float, int]]  # (step size, accepted steps) that produced each output
    dt: float | None = None  # the step to try next (the device run's controller's), else the api's first step
    control: Any = None  # the controller's memory there (a ControllerState of floats), else a fresh one
