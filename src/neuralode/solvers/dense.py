"""Dense output: the solution between output times, from the interpolants of the accepted steps.

A solve made with ``options={"dense": True}`` (or :func:`~neuralode.solvers.api.odeint_dense`) keeps
one *piece* per accepted step: where the step starts, its size ``h``, and its interpolant, the
Method's (:mod:`~neuralode.solvers.methods.interpolants`) or, for the compiled chunks, a closure.
:meth:`Solution.evaluate(t) <neuralode.solvers.solution.Solution.evaluate>` reads them. Both clocks
keep the same table and read it by one rule (:class:`PieceTable`):

- the table holds ``B`` samples' pieces: the host clock's, where one time serves the whole batch, are
  the table of one sample (:class:`DenseOutput`); the per-sample clock's are ``B`` (:class:`PerSampleDense`);
- a requested time must lie in its sample's solved span ``[t_start, t_end]``, up to the rounding of a
  last step that arrived at ``t_end`` without moving (``8 eps |t|``, ``eps`` of float64);
- it is served by the last of its sample's pieces that starts strictly before it (the first piece for a
  time at the start), so a time exactly at an event with a reset reads the piece that ends there: the
  state before the reset; a time at a step's end reads that step;
- the piece is evaluated at ``θ = (τ - t_0) / h``, clamped to ``[0, 1]`` (``θ = 0`` for a piece of
  size 0).

Where a step was cut at an event its piece serves up to the event; a sample that ended at a terminal
event has its span end there. Memory grows with the steps: each piece holds its step's stages.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import torch

from .grid import TIME_EPS
from .options import _type_name
from .solution import TensorOrTuple

# What a step interpolant (methods/interpolants.py, StepInterpolant) holds tensors in: its start state and
# derivative, the step's result (end state, error estimates, stages), the end derivative and the extended stages
# once evaluated.
_INTERPOLANT_TENSORS = ("y0", "f0", "step", "f1", "k")


class PieceTable:
    """The lookup both clocks' dense outputs share (module docstring): a subclass says where its pieces
    are (:meth:`_span`, :meth:`_table`), how to evaluate them (:meth:`_values`) and how to shape the result
    (:meth:`_shape`); ``B`` is the number of samples and ``direction`` (+1 or -1) every sample's."""

    B: int
    direction: float
    per_sample: bool  # whether the table is the per-sample clock's (times of shape (B, K) are accepted)

    def _span(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t_start, t_end)``, ``(B,)`` float64 each."""
        raise NotImplementedError

    def _table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every piece, sorted by sample and then by ``direction * t0``: ``(t0, h, first, counts)`` and
        ``key = direction * t0``, where sample ``i``'s pieces are ``first[i] : first[i] + counts[i]``."""
        raise NotImplementedError

    def _values(self, piece: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The clock's states ``(Q, ...)`` of the sorted pieces ``piece (Q,)`` at ``theta (Q,)`` float64; the
        queries are sample-major, ``Q = B K``."""
        raise NotImplementedError

    def _shape(self, y: torch.Tensor, t: torch.Tensor) -> Any:
        """The user's states from :meth:`_values`'s ``y``, for the times ``t`` as given."""
        raise NotImplementedError

    def _where(self, i: int) -> str:
        return f" of sample {i}," if self.per_sample else ""

    def __call__(self, t: torch.Tensor) -> Any:
        """The states at ``t``; see :meth:`Solution.evaluate <neuralode.solvers.solution.Solution.evaluate>`.

        Raises:
            TypeError, ValueError: naming ``t``: not a floating tensor, a wrong shape, no time, or a time
                outside a sample's solved span.
        """
        B, per_sample = self.B, self.per_sample
        shapes = f"(), (K,) or ({B}, K)" if per_sample else "() or (K,)"
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else _type_name(t)
            raise TypeError(
                f"Solution.evaluate(t) takes a floating-point tensor of times, of shape {shapes}; got {got}."
            )
        if t.dim() > (2 if per_sample else 1) or (t.dim() == 2 and t.shape[0] != B):
            raise ValueError(f"Solution.evaluate(t) takes t of shape {shapes}; got {tuple(t.shape)}.")
        if t.numel() == 0:
            raise ValueError(f"Solution.evaluate(t) needs at least one time; got t of shape {tuple(t.shape)}.")
        t_start, t_end = self._span()
        dev = t_start.device
        tau = t.detach().to(dev, torch.float64).reshape(-1 if t.dim() < 2 else B, t.shape[-1] if t.dim() else 1)
        tau = tau.expand(B, -1) if tau.shape[0] != B else tau  # (B, K)
        lo, hi = torch.minimum(t_start, t_end), torch.maximum(t_start, t_end)
        # A sample whose last step ended within rounding of its last time arrived there without a
        # step: the span reaches the last time up to that rounding.
        slack = (8 * TIME_EPS * torch.maximum(lo.abs(), hi.abs()))[:, None]
        bad = (tau < lo[:, None] - slack) | (tau > hi[:, None] + slack) | ~torch.isfinite(tau)
        if bool(bad.any()):
            i, j = bad.nonzero()[0].tolist()
            raise ValueError(
                f"Solution.evaluate: t = {float(tau[i, j])!r} lies outside the solved span{self._where(i)} "
                f"[{float(t_start[i])!r}, {float(t_end[i])!r}]."
            )
        key, t0, h, first, counts = self._table()
        if key.numel() == 0:
            raise ValueError("Solution.evaluate: the solve took no step, so there is no dense output to read.")
        empty = (counts == 0).nonzero()
        if empty.numel():
            i = int(empty[0, 0])
            raise ValueError(
                f"Solution.evaluate: sample {i} took no step (its span is the single time "
                f"{float(t_start[i])!r}), so it has no dense output to read."
            )
        # Each query's piece: the last of its sample's pieces starting strictly before it (the
        # first piece for a time at the sample's start), so a time exactly at an event reads the
        # piece that ends there: the state before the reset. Every sample's keys form one row of a
        # (B, most pieces) table padded with +inf, searched at once.
        n = key.numel()
        sample = torch.repeat_interleave(torch.arange(B, device=dev), counts)
        keys = torch.full((B, int(counts.max())), torch.inf, dtype=key.dtype, device=dev)
        keys[sample, torch.arange(n, device=dev) - first[sample]] = key
        pos = torch.searchsorted(keys, (tau * self.direction).contiguous(), right=False) - 1  # (B, K)
        piece = (first[:, None] + torch.minimum(pos.clamp(min=0), (counts - 1)[:, None])).reshape(-1)
        q, hp = tau.reshape(-1), h[piece]
        theta = torch.where(
            hp == 0, torch.zeros_like(q), (q - t0[piece]) / torch.where(hp == 0, torch.ones_like(hp), hp)
        )
        return self._shape(self._values(piece, theta.clamp(0.0, 1.0)), t)


class DenseOutput(PieceTable):
    """The host clock's dense output: the interpolants of every accepted step, in time order.

    Each piece covers ``[t_start, t_start + h]`` and evaluates the step's interpolant
    (``interp(thetas) -> list of flat states``). Pieces meet at step ends; at an event with a
    reset the state jumps, and a time exactly at the event reads the state before the reset.
    The adjoints read it piece by piece (:meth:`piece`, :meth:`steps`, :meth:`hermite`).
    """

    B, per_sample = 1, False

    def __init__(self, direction: float, unflatten: Callable[[torch.Tensor], TensorOrTuple], t_start: float):
        self.direction = direction
        self.unflatten = unflatten
        self.t_start = t_start
        self.t_end = t_start
        self._starts: list[float] = []  # direction * step start, increasing
        self._pieces: list[tuple[float, float, Callable]] = []
        self._cache: tuple[int, tuple[torch.Tensor, ...]] | None = None

    def add(self, t0: float, h: float, interp: Callable[[list[float]], list[torch.Tensor]], t_end: float) -> None:
        """Add a step from ``t0`` of size ``h`` whose interpolant serves up to ``t_end`` (the
        step's end, or the event it was cut at)."""
        self._starts.append(self.direction * t0)
        self._pieces.append((t0, h, interp))
        self.t_end = t_end

    def hermite(self) -> DenseOutput:
        """The same pieces with every linear one (a fixed grid's default ``interp``) as a cubic Hermite
        interpolant of its step, ``f(t1, y1)`` taken from the next piece's first stage when the two meet
        at a plain step end (else evaluated on first use). The interpolating adjoint reads ``y(t)`` at
        the backward stages' times: linear interpolation would hold its gradients to second order
        (gl6 at step 0.02 is 1.3e-4 from backpropagation, falling as h^2), cubic Hermite
        interpolation to fourth."""
        out = DenseOutput(self.direction, self.unflatten, self.t_start)
        out.t_end, out._starts = self.t_end, list(self._starts)
        pieces = self._pieces
        for i, (t0, h, interp) in enumerate(pieces):
            smooth = getattr(interp, "smooth", None)  # a StepInterpolant (compiled chunks keep other callables)
            if smooth is not None:
                interp = smooth(pieces[i + 1][2] if i + 1 < len(pieces) else None)
            out._pieces.append((t0, h, interp))
        return out

    def steps(self) -> list[tuple[float, float, float, Callable[[list[float]], list[torch.Tensor]]]]:
        """Every step as ``(t0, t1, h, interp)`` in time order: the step starts at ``t0`` with size ``h``,
        ``interp(thetas)`` evaluates it at ``t0 + theta h``, and it serves up to ``t1`` (the next step's start,
        or ``t_end`` for the last), so the steps tile ``[t_start, t_end]``."""
        ends = [t0 for t0, _, _ in self._pieces[1:]] + [self.t_end]
        return [(t0, t1, h, interp) for (t0, h, interp), t1 in zip(self._pieces, ends)]

    def piece(self, t: float) -> tuple[float, float, Callable[[list[float]], list[torch.Tensor]]]:
        """``(t_start, h, interp)`` of the step whose interpolant serves time ``t`` (the first step
        for times at or before the start; at a step end, the step that ends there): the rule of
        :class:`PieceTable`, for one float time."""
        return self._pieces[max(bisect.bisect_left(self._starts, self.direction * t) - 1, 0)]

    def _span(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([self.t_start], dtype=torch.float64), torch.tensor([self.t_end], dtype=torch.float64)

    def _table(self):
        n = len(self._pieces)
        if self._cache is None or self._cache[0] != n:
            t0 = torch.tensor([p[0] for p in self._pieces], dtype=torch.float64)
            h = torch.tensor([p[1] for p in self._pieces], dtype=torch.float64)
            key = torch.tensor(self._starts, dtype=torch.float64)
            self._cache = (n, (key, t0, h, torch.zeros(1, dtype=torch.long), torch.tensor([n])))
        return self._cache[1]

    def _values(self, piece: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        # One interpolant call per time, as the loop's outputs read a single time: a call with several
        # times inside one step contracts them together, which moves the last bits.
        pieces = self._pieces
        return torch.stack([pieces[p][2]([th])[0] for p, th in zip(piece.tolist(), theta.tolist())])

    def _shape(self, y: torch.Tensor, t: torch.Tensor) -> TensorOrTuple:
        stacked = y  # (K, ...): the loop's state at each time
        if t.dim() == 0:
            return self.unflatten(stacked[0])
        if isinstance(self.unflatten(stacked[0]), tuple):
            cols = [self.unflatten(row) for row in stacked]
            return tuple(torch.stack(c) for c in zip(*cols))
        return stacked


class PerSampleDense(PieceTable):
    """The per-sample clock's dense output: each sample's solution between its own steps.

    The loop keeps the interpolant of every accepted step (the Method's, over the batch the step was
    taken on) and, per accepted row, which sample it belongs to, where its step starts and how long it
    is. All the requests falling into one kept step are one interpolant pass (``at_rows``).
    ``dense(t)`` takes ``t`` 0-dim (every sample at that time, ``(B, ...)``), ``(K,)`` shared or
    ``(B, K)`` per sample (``(K, B, ...)``, like ``Solution.ys``).

    Args:
        B: the batch size.
        direction: +1 or -1 (every sample's direction).
        unflatten: ``(..., B, N)`` -> the user's structure.
        t_start: ``(B,)`` float64 first times.
    """

    per_sample = True

    def __init__(self, B: int, direction: float, unflatten, t_start: torch.Tensor):
        self.B, self.direction, self.unflatten = B, direction, unflatten
        self.t_start = t_start.clone()
        self.t_end = t_start.clone()
        self._interps: list = []
        self._pieces: list[tuple[torch.Tensor, ...]] = []  # (sample, step index, row, t0, h) of accepted rows
        self._sorted: tuple[torch.Tensor, ...] | None = None

    def add(
        self, accept: torch.Tensor, rows: torch.Tensor, t: torch.Tensor, h: torch.Tensor, t_end: torch.Tensor, interp
    ) -> None:
        """Keep the step ``interp`` for its accepted rows (``accept``), which serve up to ``t_end``."""
        r = accept.nonzero().squeeze(1)
        if r.numel() == 0:
            return
        k = len(self._interps)
        self._interps.append(interp)
        self._pieces.append((rows[r], torch.full_like(r, k), r, t[r], h[r]))
        self.t_end.index_copy_(0, rows[r], t_end[r])
        self._sorted = None

    def _span(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.t_start, self.t_end

    def _columns(self) -> tuple[torch.Tensor, ...]:
        """Every piece, sorted by sample and then by ``direction * t0``: ``(sample, step, row, t0, h, first, counts)``."""
        if self._sorted is None:
            if not self._pieces:
                empty = torch.zeros(0, dtype=torch.float64, device=self.t_start.device)
                none = torch.zeros(self.B, dtype=torch.long, device=self.t_start.device)
                return (none[:0], none[:0], none[:0], empty, empty, none, none)
            cols = [torch.cat(c) for c in zip(*self._pieces)]
            sample, t0 = cols[0], cols[3]
            order = torch.argsort(t0 * self.direction, stable=True)
            order = order[torch.argsort(sample[order], stable=True)]
            cols = [c[order] for c in cols]
            counts = torch.bincount(cols[0], minlength=self.B)
            self._sorted = (*cols, torch.cumsum(counts, 0) - counts, counts)
        return self._sorted

    def _table(self):
        _, _, _, t0, h, first, counts = self._columns()
        return (t0 * self.direction).contiguous(), t0, h, first, counts

    def _values(self, piece: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        _, step, row, _, _, _, _ = self._columns()
        y: torch.Tensor | None = None
        for k in torch.unique(step[piece]).tolist():
            m = step[piece] == k
            vals = self._interps[k].at_rows(row[piece[m]], theta[m])
            if y is None:
                y = vals.new_empty(piece.numel(), vals.shape[1])
            y[m] = vals
        assert y is not None  # PieceTable.__call__ refuses a t without times
        return y

    def _shape(self, y: torch.Tensor, t: torch.Tensor) -> TensorOrTuple:
        y = y.reshape(self.B, -1, y.shape[-1]).transpose(0, 1)  # (B K, N) -> (K, B, N)
        return self.unflatten(y[0]) if t.dim() == 0 else self.unflatten(y)


def dense_tensors(dense: DenseOutput) -> list[object]:
    """What a dense output keeps, for :func:`~neuralode.solvers.solution.storage_bytes`: the tensors its step
    interpolants hold (start and end states, stages, error estimates, the derivatives evaluated on first use).
    Interpolants that are not :class:`~neuralode.solvers.methods.interpolants.StepInterpolant` objects (compiled
    chunks' closures) are not seen."""
    return [getattr(interp, name, None) for _, _, interp in dense._pieces for name in _INTERPOLANT_TENSORS]
