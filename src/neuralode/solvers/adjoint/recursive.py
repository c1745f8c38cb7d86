"""Checkpointed backpropagation with a memory budget: ``options={"checkpoints": K}``.

Backpropagation through a solve of ``n`` steps keeps every stage of every step for the backward pass
(memory ``O(n s)`` for ``s`` stages); ``options={"checkpoint": True}`` keeps each step's input state and
recomputes its stages then (memory ``O(n)``). With ``options={"checkpoints": K}`` at most ``K`` states are
stored, whatever ``n``, and the rest are recomputed in the backward pass (Griewank and Walther, "Algorithm
799: revolve", ACM TOMS 2000; diffrax's ``RecursiveCheckpointAdjoint(checkpoints=K)``, whose name the option
takes). The gradients are those of backpropagation through the same solve, to rounding: the backward pass
re-runs the very steps the forward pass took (same times, step sizes, stepper and arithmetic, so the same
states), and differentiates them one at a time.

**Forward.** The solve runs on the host clock with autograd off, on :class:`RecordingClock`, which logs every
accepted step (its time, step, the stop it lands on, the side of ``func`` and the first output it fills) and
stores *checkpoints* (the state at a step's start and the derivative the step reuses from the one before,
FSAL). Where they are stored depends on whether the number of steps ``n`` is known before the solve:

* On a fixed grid it is (one step per grid point), so the forward pass stores the checkpoints revolve sets
  in its first sweep (:func:`first_sweep`): step ``0``, then :func:`split` steps further with one slot fewer
  each time, up to ``K`` of them. With the last step taped (below), the backward pass then runs revolve's
  whole plan and re-runs its fewest steps (``tests/test_checkpoints_budget.py`` checks the count).
* On an adaptive solve it is not, so the checkpoints are thinned online: one at the steps
  ``0, s, 2s, ...``; when ``K`` are stored, every other one is dropped and the spacing ``s`` doubles, so the
  forward pass holds at most ``K`` states and the segments between checkpoints are at most ``s <= 2n/K``
  steps long (a geometric schedule).

**Which checkpoints the backward pass keeps.** It reverses the segments last first, and while it reverses
segment ``j`` the checkpoints of segments ``0 .. j-1`` are still held, so segment ``j`` has ``K - j`` slots.
Keeping every stored checkpoint can leave the last segment one slot, and one slot reverses ``L`` steps in
``L (L + 1) / 2`` re-runs (each step is reached again from the segment's start); dropping some gives the
later segments slots. When the forward pass ends, :func:`keep_checkpoints` picks, of the states it holds, the
subset (with step ``0``) whose reversal re-runs the fewest steps, by dynamic programming over the subsets and
the binomial rule's exact count (:func:`reversal_cost`). A solve of at most ``K`` steps keeps every state
and re-runs each step once; a long adaptive one keeps about half of them (thinning online to ``⌈K/2⌉`` and
keeping them all is one of the subsets searched, so the choice re-runs no more than that). On a fixed grid
the search keeps the first-sweep checkpoints whole, revolve's plan (``benchmarks/bench_checkpoints.py``
tabulates both against revolve's fewest with ``n`` known).

**The last step is taped.** The forward pass takes each attempt at the step that lands on the last time with
autograd recording, from inputs of its own that require grad (revolve's first sweep ends the same way), and
keeps the accepted one's graph (:class:`Tape`). The backward pass differentiates it first, from that graph,
and re-runs only the steps before it: one step fewer, which is a third of the re-runs of a three-step solve.
A second backward pass (``retain_graph=True``) finds that graph used up and re-runs the step from its
inputs. (An attempt retried after a rejection, whose first stage was evaluated afresh from the state, is not
taped: its first stage is then held as a value, while its gradient must flow through the state; the backward
pass re-runs that step.)

``checkpoints="auto"`` sets the budget from the step count as the solve goes: ``K = 2 + ⌈log₂ n⌉`` after
``n`` accepted steps, so that a solve of ``n`` steps stores at most ``2 + ⌈log₂ n⌉`` states; each step is
then re-run a number of times that grows like ``log n / log log n`` (revolve's bound with ``K ~ log₂ n``). On
a fixed grid the first-sweep plan is made for ``K = 2 + ⌈log₂ N⌉``, ``N`` the grid's steps, and a checkpoint is
stored only while fewer than the budget of the steps taken so far are held, so the bound holds when fewer
steps are taken than planned (a grid point within rounding of the one before is reached without a step)
and whenever the plan sets its checkpoints ahead of the step count's budget (just past a power of two).

**Backward.** The segments are reversed last to first; segment ``j`` may use the ``K - j`` slots that the
checkpoints of the segments after it have freed, its own included. A segment of ``L`` steps with ``c`` slots
is reversed by revolve's binomial rule: with ``r`` the least number of sweeps such that ``C(c + r, c) >= L``,
a checkpoint is set :func:`split` steps in (advancing to it without a graph), the part after it is reversed
with ``c - 1`` slots and the part before with ``c`` (each step is then advanced over at most ``r`` times, and
the steps advanced are revolve's fewest). With one slot the steps are reached by advancing from the segment's
start, last first. Reversing one step re-runs it with a graph from its stored input (state, and the FSAL
derivative when it was reused) and applies ``torch.autograd.grad`` to its end state, its FSAL derivative and
the outputs it filled, against the adjoints carried from the step after it; parameter gradients are summed
over the steps, last first. Which steps are re-run, and how often, changes nothing in the gradients: every
step is differentiated alone, in the same order, from the same state with the same arithmetic (the taped last
step on the forward pass's own graph of it).

Gradients flow to ``y0``, ``t`` (through the solve's start and outputs, as without the option) and
``func.parameters()`` (``func`` must be a ``torch.nn.Module``, as torchdiffeq's ``odeint_adjoint`` asks
without ``adjoint_params``). ``Solution.stats.n_recomputed_steps`` and ``.max_stored_states`` report the
backward pass's schedule, planned in the forward pass by the same recursion (:func:`reverse`) that runs it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, cast

import torch

from ..loop import HostClock, integrate
from ..solution import BackwardRecord, HeldStorages, LoopResult, SolverStats, storage_bytes

# The counters of the last backward pass run (a test hook: they must equal the plan in Solution.stats).
LAST_BACKWARD: dict[str, int] = {}


@dataclass(frozen=True)
class StepRecord:
    """What :meth:`HostClock.plan` decided for one accepted step, enough to take it again: its start ``t``,
    step ``h`` (and ``dt_abs``, ``remaining``), whether it ``lands`` on the stop ``t_stop`` and whether that
    is a jump of ``func``, the side of ``func`` at its start, the index of the first output it may fill, and
    whether its first stage was evaluated afresh (``fresh``) rather than carried from the step before."""

    t: float
    h: float
    dt_abs: float
    remaining: float
    lands: bool
    t_stop: float
    jump_here: bool
    f0_side: int
    i_out: int
    fresh: bool


def auto_budget(n: int) -> int:
    """``checkpoints="auto"``'s budget after ``n >= 1`` accepted steps: ``2 + ⌈log₂ n⌉``."""
    return 2 + (n - 1).bit_length()


class RecordingClock(HostClock):
    """The host clock, logging each accepted step (:class:`StepRecord`) and keeping checkpoints
    ``step index -> (y, f0 or None)``: on a fixed grid (the steps known in advance) revolve's first-sweep
    checkpoints (:func:`first_sweep`), else at most ``⌈budget/2⌉`` by the online doubling rule of the module
    docstring (``budget="auto"``: the budget follows the step count, :func:`auto_budget`).
    Outputs reached without a step (a stop within rounding of the clock's time) are noted as copies of the
    state they were reached at (``arrivals``: output index -> state index)."""

    __slots__ = ("log", "store", "spacing", "budget", "auto", "fresh", "arrivals", "peak", "planned", "tape", "taping")

    def __init__(self, *args, budget: int | str, **kwargs):
        super().__init__(*args, **kwargs)
        # The last step's inputs and graph (:class:`Tape`), recorded as the forward pass takes it.
        self.tape: Tape | None = None
        self.taping: tuple[torch.Tensor, torch.Tensor | None, int] | None = None
        self.log: list[StepRecord] = []
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.fresh: bool | None  # whether the next step's f0 is evaluated (None: not yet attempted)
        self.auto = budget == "auto"
        self.budget = auto_budget(1) if isinstance(budget, str) else budget
        self.spacing, self.fresh, self.peak = 1, None, 0
        self.arrivals: dict[int, int] = {}
        # A fixed grid takes one step per stop (a stop within rounding of the clock's time is reached without
        # one, so the count is an upper bound): revolve's first-sweep checkpoints for that many steps.
        self.planned: frozenset[int] | None = None
        if not self.adaptive:
            n = len(self.stops)
            self.planned = first_sweep(n, auto_budget(n) if self.auto else self.budget)

    def plan(self) -> bool:
        n = len(self.ys)
        go = super().plan()
        if not go:
            for j in range(n, len(self.ys)):
                self.arrivals[j] = len(self.log)
            self.fresh = None
        return go

    def attempt(self, take):
        if self.fresh is None:  # the first attempt from this point: is its f0 carried or evaluated?
            self.fresh = self.f0 is None
        if self.lands and self.i_stop == len(self.stops) - 1 and not (self.fresh and self.f0 is not None):
            # (Not a step retried after a rejection that evaluated its first stage afresh: that stage is a function
            # of y, which the backward pass differentiates through, so such a step is re-run there.)
            # An attempt at the last step: taken with its graph, from inputs of its own (revolve's last step of
            # the first sweep is taped, so the backward pass need not re-run it).
            y = self.y.detach().requires_grad_()
            f = None if self.f0 is None else self.f0.detach().requires_grad_()
            self.y, self.f0, self.taping = y, f, (y, f, len(self.ys))
            torch.set_grad_enabled(True)
        return super().attempt(take)

    def untape(self) -> None:
        """Back to the forward pass's mode without a graph (an attempt at the last step refused or rejected)."""
        if self.taping is not None:
            torch.set_grad_enabled(False)
            self.taping = None

    def release(self) -> None:
        """Drop the clock's references into the last step's graph once the forward pass is over (the tape holds
        what the backward pass needs, and gives it up there)."""
        self.y = self.y.detach()
        if self.f0 is not None:
            self.f0 = self.f0.detach()
        self.f1 = self.ev_interp = None
        self.ys = []

    def refuse(self, controller, f0, shrink) -> None:
        self.untape()
        super().refuse(controller, f0, shrink)

    def keep(self, accept, f0, step, dt_next, control) -> bool:
        if not super().keep(accept, f0, step, dt_next, control):
            self.untape()
            return False
        k = len(self.log)
        self.log.append(
            StepRecord(
                self.t,
                self.h,
                self.dt_abs,
                self.remaining,
                self.lands,
                self.t_stop,
                self.jump_here,
                self.f0_side,
                self.i_out,
                cast(bool, self.fresh),  # attempt() decided it before any step from this point is kept
            )
        )
        if self.auto:
            self.budget = auto_budget(k + 1)
        store = self.store
        if self.taping is not None:
            pass  # the last step: the tape holds its inputs
        elif self.planned is not None:
            # len(store) < budget: never more than the budget of the steps taken so far, which the final
            # budget is at least (it binds only where fewer steps were taken than planned).
            if k in self.planned and len(store) < self.budget:
                store[k] = (self.y, None if self.fresh else self.f0)
                self.peak = max(self.peak, len(store))
        elif k % self.spacing == 0:
            if len(store) >= self.budget:
                self.spacing *= 2
                self.store = store = {i: s for i, s in store.items() if i % self.spacing == 0}
            if k % self.spacing == 0:
                store[k] = (self.y, None if self.fresh else self.f0)
                self.peak = max(self.peak, len(store))
        return True

    def move(self, f0, step, accept, dt_next, control, cut) -> None:
        super().move(f0, step, accept, dt_next, control, cut)
        self.fresh = None
        if self.taping is not None:
            y, f, first_out = self.taping
            self.tape = Tape(len(self.log) - 1, y, f, step.y1, self.ys[first_out:])
            self.untape()

    def replay(self, take, rec: StepRecord, y: torch.Tensor, f0: torch.Tensor | None):
        """Take the recorded step ``rec`` again from ``(y, f0)`` with the host clock's own arithmetic. Returns
        the end state, the derivative the next step reuses (``None`` where it evaluates its own) and the
        outputs the step fills.

        A step whose stages all lie inside it (no jump of ``func`` at its end, no ``perturb``) and that fills
        no output strictly inside it builds no interpolant: it is the stepper's call alone, made here as
        :meth:`HostClock.attempt` makes it, its output (where it ends on one) is its end state and the next
        step reuses its last stage when the method is FSAL (:meth:`HostClock.interpolant`,
        :meth:`HostClock.move`). Any other step goes through the clock's phases (attempt, interpolant,
        outputs, move)."""
        t, h, i_out = rec.t, rec.h, rec.i_out
        t1 = rec.t_stop if rec.lands else t + h
        times, n_out = self.times, self.n_out
        inside = i_out < n_out and times[i_out] != t1 and (times[i_out] - t1) * self.direction < 0
        if not (rec.jump_here or self.perturb or inside):
            problem = self.problem
            if self.stage_c is not None:
                problem.step_times(t, h, self.stage_c)
            _, step = take(rec.f0_side, t, y, None if rec.fresh else f0, h, problem, None)
            y1 = step.y1
            return y1, step.k[-1] if self.fsal else None, [y1] if i_out < n_out and times[i_out] == t1 else []
        self.t, self.h, self.dt_abs, self.remaining = t, h, rec.dt_abs, rec.remaining
        self.lands, self.t_stop, self.jump_here = rec.lands, rec.t_stop, rec.jump_here
        self.f0_side, self.i_out = rec.f0_side, i_out
        self.y, self.f0 = y, None if rec.fresh else f0
        self.ys, self.out_steps = [], []
        f0, step = HostClock.attempt(self, take)
        interp = HostClock.interpolant(self, f0, step)
        HostClock.events(self, step, interp)  # no events: notes the interpolant the next f0 may come from
        HostClock.outputs(self, step, interp, None)
        HostClock.move(self, f0, step, True, self.dt, self.control, None)
        return step.y1, self.f0, self.ys


@dataclass
class Tape:
    """The last step as the forward pass took it, with its graph: step ``k`` from the inputs ``y`` (and ``f``, the
    derivative it reused, or ``None``) that require grad, to ``y1`` and the ``outputs`` it filled."""

    k: int
    y: torch.Tensor
    f: torch.Tensor | None
    y1: torch.Tensor
    outputs: list[torch.Tensor] | None  # None once a backward pass has used the graph up


def split(length: int, slots: int) -> int:
    """Where revolve sets its next checkpoint in ``length >= 2`` steps with ``slots >= 2`` (the start's
    included), so that reversing them advances over the fewest steps.

    With ``β(c, r) = C(c + r, c)``, the most steps ``c`` slots reverse advancing over each at most ``r`` times,
    and ``r`` the fewest sweeps with ``β(slots, r) >= length``, the fewest steps advanced is
    ``r · length - β(slots + 1, r - 1)`` (Griewank and Walther 2000). The split is the last one that reaches it:
    ``β(slots, r - 1)`` steps in (the part before it is then reversed in ``r - 1`` sweeps), or fewer, so that the
    part after it, reversed with one slot fewer, keeps at least ``β(slots - 1, r - 1)`` steps. (Checked against an
    exhaustive search over every split of up to 400 steps and 8 slots. Always ``β(slots, r - 1)`` is not optimal
    with few slots: 4 steps with 2 slots then advance over 5 steps instead of 4.)"""
    r = 1
    while math.comb(slots + r, slots) < length:
        r += 1
    return min(math.comb(slots + r - 1, slots), length - math.comb(slots + r - 2, slots - 1), length - 1)


def first_sweep(n: int, budget: int) -> frozenset[int]:
    """The checkpoints revolve sets while it first sweeps ``n`` steps known in advance with ``budget`` slots:
    ``0``, then :func:`split` steps further with one slot fewer each time. Stored by the forward pass (which
    sweeps the steps anyway), they make :func:`schedule` run revolve's whole plan."""
    out, a, slots = [0], 0, budget
    while n - a > 1 and slots > 1:
        a += split(n - a, slots)
        slots -= 1
        out.append(a)
    return frozenset(out)


@functools.cache
def reversal_cost(length: int, slots: int) -> int:
    """The steps :func:`reverse` re-runs (advanced, and the one differentiated each) to reverse ``length`` steps
    from a held state with ``slots`` slots, the start's included."""
    if length <= 1:
        return length
    if slots < 2:
        return length * (length + 1) // 2  # from the start to each step, last first
    m = split(length, slots)
    return m + reversal_cost(length - m, slots - 1) + reversal_cost(m, slots)


def keep_checkpoints(positions: list[int], n: int, budget: int) -> list[int]:
    """The checkpoints to keep for the backward pass: of the steps ``positions`` (sorted, ``0`` first) whose
    states the forward pass holds after ``n`` steps, the subset with ``0`` whose reversal re-runs the fewest steps
    (:func:`reversal_cost`), fewest kept on a tie.

    Segment ``j`` (from the ``j``-th kept checkpoint to the next, or to ``n``) is reversed with the ``budget - j``
    slots left while the ``j`` before it are held, so a checkpoint is worth keeping only where the slots it takes
    from the segments before it cost less than the re-runs it saves: every state held when ``n <= budget``
    (each step then re-run once, to differentiate it), fewer where a long last segment needs the slots."""
    m = len(positions)
    if m <= 1:
        return list(positions)

    @functools.cache
    def best(i: int, j: int) -> tuple[int, int, int]:
        """``(re-runs, kept, next)`` from ``positions[i]``, the ``j``-th checkpoint kept, to the end; ``next`` is
        the next kept index (``m``: none)."""
        slots = budget - j
        out = (reversal_cost(n - positions[i], slots), 1, m)
        if slots > 1:
            for i2 in range(i + 1, m):
                cost, kept, _ = best(i2, j + 1)
                cand = (reversal_cost(positions[i2] - positions[i], slots) + cost, kept + 1, i2)
                if cand[:2] < out[:2]:
                    out = cand
        return out

    kept, i = [], 0
    while i < m:
        kept.append(positions[i])
        i = best(i, len(kept) - 1)[2]
    return kept


class Counter:
    """The backward pass's bookkeeping: steps re-run and stored states (the forward checkpoints still
    held plus those set inside a segment), with their peak; and, when the pass runs (not when it is
    planned), the storages of the states held (``ledger``)."""

    def __init__(self, held: int, ledger: HeldStorages | None = None):
        self.recomputed, self.held, self.peak = 0, held, held
        self.ledger = ledger

    def hold(self, state: Any) -> None:
        """One more stored state, ``state``."""
        self.held += 1
        self.peak = max(self.peak, self.held)
        if self.ledger is not None:
            self.ledger.add(state)

    def release(self, state: Any) -> None:
        """``state`` is no longer stored."""
        self.held -= 1
        if self.ledger is not None:
            self.ledger.discard(state)


def reverse(a: int, b: int, state: Any, slots: int, advance, back, count: Counter) -> None:
    """Reverse steps ``a .. b-1`` from ``state`` (the state at step ``a``, held in one of ``slots``):
    ``advance(k, state) -> state`` re-runs step ``k`` without a graph, ``back(k, state)`` differentiates it.
    Steps are reversed last first, so ``back`` sees each step after every later one."""
    while b > a:
        if b - a == 1:
            count.recomputed += 1
            back(a, state)
            return
        if slots >= 2:
            m = a + split(b - a, slots)
            s = state
            for k in range(a, m):
                s = advance(k, s)
            count.recomputed += m - a
            count.hold(s)
            reverse(m, b, s, slots - 1, advance, back, count)
            count.release(s)
            b = m
        else:
            s = state
            for k in range(a, b - 1):
                s = advance(k, s)
            count.recomputed += b - a  # b - 1 - a advanced, one differentiated
            back(b - 1, s)
            b -= 1


def schedule(run: Run, advance, back, ledger: HeldStorages | None = None, free: bool = False) -> Counter:
    """Reverse every segment, last first, segment ``j`` with the ``budget - j`` slots left to it; with
    ``advance``/``back`` that do nothing it is the plan. The last step, when the forward pass taped it, is
    differentiated before (and not re-run): the segments end at ``run.n_replayed``. ``ledger``: the storages
    held, the forward checkpoints first. ``free``: drop each forward checkpoint but the first from ``run.store``
    once its segment is reversed, so that the states held are those the plan counts (:meth:`Run.restore` sets
    them again for another pass)."""
    starts = sorted(run.store)
    ends = starts[1:] + [run.n_replayed]
    count = Counter(len(starts), ledger)
    if ledger is not None:
        ledger.add(*run.store.values())
    for j in range(len(starts) - 1, -1, -1):
        state = run.store.get(starts[j])
        reverse(starts[j], ends[j], state, run.budget - j, advance, back, count)
        dropped = free and j > 0
        if dropped:
            del run.store[starts[j]]
        count.release(state if dropped else None)  # the ledger keeps what the store still holds
    return count


class Run:
    """One solve with ``options={"checkpoints": K}``: its clock (which holds the log and checkpoints after
    the forward pass), stepper factory and parameters, shared by the forward and backward passes."""

    def __init__(self, clock: RecordingClock, make_stepper, controller, error, params: tuple[torch.Tensor, ...]):
        self.clock, self.make_stepper, self.controller, self.error, self.params = (
            clock,
            make_stepper,
            controller,
            error,
            params,
        )
        self.log: list[StepRecord] = []
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.starts: list[int] = []  # the steps the forward pass stored checkpoints at
        self.budget = clock.budget
        self.n_outputs = 0
        self.tape: Tape | None = None
        self.n_replayed = 0  # the steps the backward pass reverses by re-running them: all but a taped last one
        # The backward passes' counters (Solution.adjoint_stats), added to as each pass runs.
        self.backward_stats = SolverStats()

    def restore(self, advance) -> int:
        """Set the forward checkpoints a previous backward pass dropped (``schedule(..., free=True)``) again,
        advancing from the first with ``advance(k, state) -> state`` (the same arithmetic, so the same states);
        returns the steps advanced (0 when none was dropped)."""
        missing = [k for k in self.starts if k not in self.store]
        if not missing:
            return 0
        first = self.starts[0]
        state = self.store[first]
        for k in range(first, missing[-1]):
            state = advance(k, state)
            if k + 1 in missing:
                self.store[k + 1] = state
        return missing[-1] - first


class _RecursiveCheckpoint(torch.autograd.Function):
    """The solve as one autograd node: forward without a graph, backward by :func:`schedule`."""

    @staticmethod
    def forward(ctx, run: Run, y0: torch.Tensor, f0: torch.Tensor, *params: torch.Tensor):
        clock = run.clock
        try:
            integrate(clock, run.make_stepper(), run.controller, run.error)
        finally:
            clock.untape()  # the mode of Function.forward (without a graph), whatever stopped the solve
        run.log, run.budget = clock.log, clock.budget
        n = len(clock.log)
        run.tape = clock.tape if clock.tape is not None and clock.tape.k == n - 1 else None
        run.n_replayed = n - 1 if run.tape is not None else n
        kept = keep_checkpoints([k for k in sorted(clock.store) if k < run.n_replayed], run.n_replayed, clock.budget)
        run.store = {k: clock.store[k] for k in kept}
        run.starts = kept
        clock.store, clock.tape = {}, None
        run.n_outputs = len(clock.ys)
        ctx.run = run
        out = torch.stack(clock.ys[1:])
        clock.release()
        return out

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        if torch.is_grad_enabled():
            raise ValueError(
                "create_graph=True is not supported with options['checkpoints']: its backward pass differentiates "
                "each recomputed step without recording a graph of that, so a second derivative would be wrong. "
                "Use backpropagation (no option) or options={'checkpoint': True} for second derivatives."
            )
        run: Run = ctx.run
        clock, log, params = run.clock, run.log, run.params
        take = run.make_stepper()
        # The evaluations of func made by this pass: the forward solve's counter (Solution.stats has its copy)
        # goes on counting the re-run steps' evaluations.
        counted = clock.problem.stats
        nfe_before = counted.nfe
        grad_out = {j: grad_ys[j - 1] for j in range(1, run.n_outputs)}
        arrivals: dict[int, list[int]] = {}
        for j, k in clock.arrivals.items():
            if j >= 1:
                arrivals.setdefault(k, []).append(j)
        gy = torch.zeros_like(grad_ys[0])
        for j in arrivals.get(len(log), ()):
            gy = gy + grad_out[j]
        adj: dict[str, Any] = {"y": gy, "f": None}
        g_params: list[torch.Tensor | None] = [None] * len(params)
        # A parameter's gradient is summed over the steps last first, ((g_n + g_{n-1}) + ...) + g_1: the second
        # term makes a tensor of this pass's own (``owned``), into which the later ones are added in place
        # (the same sums, without a tensor per step; the first term may be a buffer autograd shares).
        owned = [False] * len(params)

        def advance(k: int, state):
            with torch.no_grad():
                y1, f1, _ = clock.replay(take, log[k], *state)
            # The derivative is kept only where the next step reuses it, as the forward pass stores it.
            return (y1, None if k + 1 < len(log) and log[k + 1].fresh else f1)

        def carried() -> int:
            """Bytes of the adjoints carried from step to step: of the state, of the reused derivative, and the
            parameter-gradient sums."""
            return storage_bytes(adj["y"], adj["f"], *g_params)

        ledger = HeldStorages(carried)

        def back(k: int, state):
            """Re-run step ``k`` from ``state`` with a graph and differentiate it."""
            rec = log[k]
            y_in, f_in = state
            with torch.enable_grad():
                y = y_in.detach().requires_grad_()
                f = None if (rec.fresh or f_in is None) else f_in.detach().requires_grad_()
                y1, f1, outs = clock.replay(take, rec, y, f)
            pull(k, y, f, y1, f1, outs)

        def pull(k: int, y: torch.Tensor, f: torch.Tensor | None, y1: torch.Tensor, f1, outs) -> None:
            """The adjoints at step ``k``'s start from those at its end: ``autograd.grad`` of its graph from the
            inputs ``y`` (and ``f``) to its end state ``y1``, the derivative ``f1`` the next step reuses and the
            outputs ``outs`` it filled."""
            rec = log[k]
            with torch.enable_grad():
                roots, cot = [y1], [adj["y"]]
                if f1 is not None and adj["f"] is not None:
                    roots.append(f1)
                    cot.append(adj["f"])
                for i, o in enumerate(outs):
                    roots.append(o)
                    cot.append(grad_out[rec.i_out + i])
                pairs = [(r, c) for r, c in zip(roots, cot) if r.requires_grad]
                inputs = [y] + ([f] if f is not None else []) + list(params)
                grads = torch.autograd.grad([r for r, _ in pairs], inputs, [c for _, c in pairs], allow_unused=True)
            gy = grads[0] if grads[0] is not None else torch.zeros_like(y)
            for j in arrivals.get(k, ()):
                gy = gy + grad_out[j]
            adj["y"] = gy
            if f is not None:
                adj["f"] = grads[1] if grads[1] is not None else torch.zeros_like(f)
            else:
                adj["f"] = None
            for i, g in enumerate(grads[len(inputs) - len(params) :]):
                if g is not None:
                    before = g_params[i]
                    if before is None:
                        g_params[i] = g
                    elif owned[i]:
                        before.add_(g)
                    else:
                        g_params[i], owned[i] = before + g, True
            clock.ys = []
            ledger.note()

        restored = run.restore(advance)
        tape, extra = run.tape, 0
        if tape is not None:
            if tape.outputs is not None:  # the first backward pass: the forward pass's graph, used up here
                ledger.add((tape.y, tape.f))
                pull(tape.k, tape.y, tape.f, tape.y1, None, tape.outputs)
                tape.y1, tape.outputs = tape.y, None
            else:  # a later one (retain_graph): that graph is freed, the step is re-run from its inputs
                ledger.add((tape.y, tape.f))
                back(tape.k, (tape.y, tape.f))
                extra = 1
            ledger.discard((tape.y, tape.f))
        count = schedule(run, advance, back, ledger, free=True)
        LAST_BACKWARD.clear()
        LAST_BACKWARD.update(n_recomputed_steps=count.recomputed + extra, max_stored_states=count.peak)
        out = run.backward_stats
        out.nfe += counted.nfe - nfe_before
        out.n_recomputed_steps += restored + extra + count.recomputed
        out.max_stored_states = max(out.max_stored_states, count.peak)
        out.held_bytes = max(out.held_bytes, ledger.peak)
        g_f0 = adj["f"] if log and not log[0].fresh else None
        return (None, adj["y"], g_f0, *g_params)


def module_params(func: Any) -> tuple[torch.Tensor, ...]:
    """The tensors the gradients of a solve with ``options['checkpoints']`` flow to besides ``y0`` and ``t``:
    ``func.parameters()`` that require grad, each once."""
    if not isinstance(func, torch.nn.Module):
        raise ValueError(
            "options['checkpoints'] needs func to be a torch.nn.Module: the backward pass differentiates the "
            "recomputed steps with respect to func.parameters(), and a plain function's tensors cannot be found "
            f"(got {type(func).__name__}). Wrap func in a torch.nn.Module that holds its tensors as parameters."
        )
    seen: set[int] = set()
    out = []
    for p in func.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return tuple(out)


def solve_recursive(
    func: Any,
    problem,
    y0: torch.Tensor,
    f0: torch.Tensor,
    times: list[float],
    *,
    method,
    opts: Any,
    stops,
    jumps: frozenset[float],
    controller,
    dt0: float,
    error,
    stats,
    t_dtype: torch.dtype,
    method_config: Any = None,
) -> LoopResult:
    """The host clock's solve (as :func:`~neuralode.solvers.loop.solve_joint`, without events, dense output or
    fast paths) as one autograd node that stores at most ``opts.checkpoints`` states. Fills
    ``stats.n_recomputed_steps`` and ``stats.max_stored_states`` with the backward pass's plan, and sets
    ``problem.backward`` to the record of the counters the backward passes fill (``Solution.adjoint_stats``)."""
    params = module_params(func)
    clock = RecordingClock(
        problem,
        y0,
        f0,
        times,
        method=method,
        opts=opts,
        stops=stops,
        jumps=jumps,
        control=controller.init(),
        dt0=dt0,
        error=error,
        stats=stats,
        t_dtype=t_dtype,
        budget=opts.checkpoints,
    )

    def make_stepper():
        return method.stepper(problem, opts=opts, config=method_config, error=error, checkpoint=False)

    run = Run(clock, make_stepper, controller, error, params)
    out = _RecursiveCheckpoint.apply(run, y0, f0, *params)
    result = clock.result()  # (the forward pass released the clock's outputs: they are returned stacked)
    plan = schedule(run, lambda k, state: None, lambda k, state: None)
    stats.n_recomputed_steps = plan.recomputed
    stats.max_stored_states = max(clock.peak, plan.peak)
    problem.backward = BackwardRecord(run.backward_stats)
    return LoopResult([y0, *out.unbind(0)], result.out_steps, [], False)
