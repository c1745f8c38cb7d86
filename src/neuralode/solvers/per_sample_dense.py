"""Dense output per sample: each sample's solution between its own steps.

With ``options={"per_sample": True, "dense": True}`` (or :func:`~neuralode.solvers.api.odeint_dense`)
the loop keeps the interpolant of every accepted step (the Method's :class:`~neuralode.solvers.methods.interpolants.StepInterpolant`,
over the batch the step was taken on) and, per accepted row, which sample it belongs to, where its
step starts and how long it is. :meth:`Solution.evaluate` then finds, for each sample and each
requested time, the sample's own step containing it and evaluates that step's interpolant at
``θ = (τ - t_i) / h_i``; all the requests falling into one kept step are one interpolant pass.
Memory grows as in the host clock's dense output: the stages of every step.

Where a step was cut at an event its piece serves up to the event; a time exactly at an event
with a reset reads the state before the reset (the host clock's rule). A sample that ended at a
terminal event has its span end there.
"""

from __future__ import annotations

import torch

from .grid import TIME_EPS
from .options import _type_name


class PerSampleDense:
    """The kept pieces of a per-sample solve, callable as ``dense(t)``.

    Args:
        B: the batch size.
        direction: +1 or -1 (every sample's direction).
        unflatten: ``(..., B, N)`` -> the user's structure.
        t_start: ``(B,)`` float64 first times.
    """

    def __init__(self, B: int, direction: float, unflatten, t_start: torch.Tensor):
        self.B, self.direction, self.unflatten = B, direction, unflatten
        self.t_start = t_start.clone()
        self.t_end = t_start.clone()
        self._interps: list = []
        self._pieces: list[tuple[torch.Tensor, ...]] = []  # (sample, step index, row, t0, h) of accepted rows
        self._table = None

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
        self._table = None

    def _sorted(self):
        """Every piece, sorted by sample and then by ``direction * t0``: ``(sample, step, row, t0, h)``."""
        if self._table is None:
            cols = [torch.cat(c) for c in zip(*self._pieces)]
            sample, t0 = cols[0], cols[3]
            order = torch.argsort(t0 * self.direction, stable=True)
            order = order[torch.argsort(sample[order], stable=True)]
            cols = [c[order] for c in cols]
            counts = torch.bincount(cols[0], minlength=self.B)
            self._table = (*cols, torch.cumsum(counts, 0) - counts, counts)
        return self._table

    def __call__(self, t: torch.Tensor):
        """The states at ``t``: 0-dim (every sample at that time, ``(B, ...)``), ``(K,)`` shared
        or ``(B, K)`` per sample (``(K, B, ...)``, like ``Solution.ys``).

        Raises:
            TypeError, ValueError: naming ``t``: not a floating tensor, a wrong shape, or a time
                outside a sample's solved span.
        """
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(
                "Solution.evaluate(t) with options['per_sample'] takes a floating-point tensor of times: "
                f"0-dim, (K,) or ({self.B}, K); got {_type_name(t) if not isinstance(t, torch.Tensor) else t.dtype}."
            )
        if t.dim() > 2 or (t.dim() == 2 and t.shape[0] != self.B):
            raise ValueError(
                f"Solution.evaluate(t) with options['per_sample'] takes t of shape (), (K,) or "
                f"({self.B}, K); got {tuple(t.shape)}."
            )
        dev = self.t_start.device
        tau = t.detach().to(dev, torch.float64).reshape(-1 if t.dim() < 2 else self.B, t.shape[-1] if t.dim() else 1)
        tau = tau.expand(self.B, -1) if tau.shape[0] != self.B else tau  # (B, K)
        K = tau.shape[1]
        d = self.direction
        lo, hi = torch.minimum(self.t_start, self.t_end), torch.maximum(self.t_start, self.t_end)
        # A sample whose last step ended within rounding of its last time arrived there without a
        # step: the span reaches the last time up to that rounding.
        slack = (8 * TIME_EPS * torch.maximum(lo.abs(), hi.abs()))[:, None]
        bad = (tau < lo[:, None] - slack) | (tau > hi[:, None] + slack) | ~torch.isfinite(tau)
        if bool(bad.any()):
            i, j = bad.nonzero()[0].tolist()
            raise ValueError(
                f"Solution.evaluate: t = {float(tau[i, j])!r} lies outside the solved span of sample {i}, "
                f"[{float(self.t_start[i])!r}, {float(self.t_end[i])!r}]."
            )
        if not self._pieces:
            raise ValueError("Solution.evaluate: the solve took no step, so there is no dense output to read.")
        sample, step, row, t0, h, first, counts = self._sorted()
        # Each query's piece: the last of its sample's pieces starting strictly before it (the
        # first piece for a time at the sample's start), so a time exactly at an event reads the
        # piece that ends there: the state before the reset.
        key = (t0 * d).contiguous()
        q = tau.reshape(-1)
        piece = torch.zeros(q.numel(), dtype=torch.long, device=dev)
        for i in range(self.B):
            if int(counts[i]) == 0:
                raise ValueError(
                    f"Solution.evaluate: sample {i} took no step (its span is the single time "
                    f"{float(self.t_start[i])!r}), so it has no dense output to read."
                )
            lo_i, n_i = int(first[i]), int(counts[i])
            pos = torch.searchsorted(key[lo_i : lo_i + n_i], (tau[i] * d).contiguous(), right=False) - 1
            piece[i * K : (i + 1) * K] = lo_i + pos.clamp(0, n_i - 1)
        y: torch.Tensor | None = None
        for k in torch.unique(step[piece]).tolist():
            m = step[piece] == k
            p = piece[m]
            theta = torch.where(
                h[p] == 0, torch.zeros_like(q[m]), (q[m] - t0[p]) / torch.where(h[p] == 0, torch.ones_like(h[p]), h[p])
            )
            vals = self._interps[k].at_rows(row[p], theta.clamp(0.0, 1.0))
            if y is None:
                y = vals.new_empty(q.numel(), vals.shape[1])
            y[m] = vals
        if y is None:  # t of shape (B, 0): no query, so no piece was read and the width is unknown
            raise ValueError(
                f"Solution.evaluate(t) with options['per_sample'] needs at least one time; got t of shape "
                f"{tuple(t.shape)}."
            )
        y = y.reshape(self.B, K, -1).transpose(0, 1)  # (K, B, N)
        if t.dim() == 0:
            return self.unflatten(y[0])
        return self.unflatten(y)
