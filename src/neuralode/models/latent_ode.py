"""Latent ODEs for irregularly sampled time series (the paper's section 5), and an RNN baseline.

A :class:`LatentODE` is a variational autoencoder over time series:

1. a recognition RNN reads the observations *backwards in time* and outputs ``q(z_{t0}|x) =
   N(μ, diag σ²)``;
2. a sample ``z_{t0} = μ + σ ε`` is the initial state of ``dz/dt = f(z)`` (a small MLP), solved to
   every time asked for, earlier or later than the observations;
3. a decoder maps each ``z(t_i)`` to the observation space;
4. training maximises the ELBO ``Σ_i log N(x_i; dec(z(t_i)), s²) − KL(q(z_{t0}) ‖ N(0, I))``.

Sizes default to the paper's reference code (torchdiffeq ``examples/latent_ode.py``): latent
dimension 4, recognition hidden 25, ODE and decoder hidden 20, ELU in the dynamics, ReLU in the
decoder, observation noise ``s = 0.3``.

**Inputs** are batches ``(values, times, mask)``: ``values (B, T, D)``; ``times (T,)`` shared or
``(B, T)`` per sample; ``mask (B, T)`` bool (``None``: all observed). Each row's observed times
must be strictly increasing; unobserved slots are ignored whatever their values and times hold, so
sequences of different lengths are padded to ``T`` and masked.

**Per-sample observation times.** Each sample's ``z_{t0}`` lives at its own ``t0`` (by default its
first observed time). Because the latent dynamics are autonomous (``f`` does not read ``t``), a
sample's trajectory depends only on the time elapsed since its ``t0``: every sample is put on its
own clock ``τ = t − t0``. When the samples' ``τ`` differ and the method is adaptive, the batch is
solved with per-sample step control (``options={"per_sample": "compact"}``): each sample steps on
its own clock to its own times only (forwards for ``τ > 0``, and a second solve backwards for
``τ < 0``), where the union scheme below interpolates the whole batch at all ``B x Q`` times
(``benchmarks/results/per_sample.md``, "Latent ODE", times both on the spirals). Otherwise (fixed-step methods, options
per-sample mode lacks, or one shared clock) the whole batch is solved *once* over the sorted
union of the batch's ``τ``; each sample then gathers its own times from that grid. Since the solver's dense output gives the state at any
output time without stepping to it, the union adds no steps, only interpolations. The step sizes
are chosen from the error of the whole batch, so a sample's values differ from solving it alone
by no more than the solver tolerance (tested at tight tolerance). The alternatives: solving each
sample separately (B solves: correct but slow), or torchdiffeq's single shared ``t`` (forces all
samples onto one grid). The "union and mask" scheme is also what Rubanova et al.'s latent ODE code
does; shifting each sample to its own clock, which that code does not do, is what lets samples start at
different times.

:class:`RNNBaseline` is the comparison of the paper's Table 2: a GRU (25 units) reading
(observation, time since the previous observation) and predicting the next observation from its
state and the time gap to it; it extrapolates autoregressively (see its docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import nn

from ..solvers import odeint, odeint_adjoint
from .layers import ODEFunc

_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# Inputs.


def _check_inputs(
    values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a ``(values, times, mask)`` batch; return ``times (B, T)`` and ``mask (B, T)`` bool."""
    if not isinstance(values, torch.Tensor) or values.dim() != 3 or not values.is_floating_point():
        raise ValueError(
            f"values must be a floating tensor of shape (batch, time, features); got "
            f"{tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__}."
        )
    B, T, _ = values.shape
    if not isinstance(times, torch.Tensor) or not times.is_floating_point():
        raise TypeError("times must be a floating-point tensor of shape (time,) or (batch, time).")
    if times.dim() == 1:
        times = times.expand(B, T) if times.shape[0] == T else times
    if times.shape != (B, T):
        raise ValueError(
            f"times must have shape ({T},) or ({B}, {T}) to match values {tuple(values.shape)}; got {tuple(times.shape)}."
        )
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=values.device)
    else:
        if mask.shape != (B, T):
            raise ValueError(
                f"mask must have shape ({B}, {T}) to match values {tuple(values.shape)}; got {tuple(mask.shape)}."
            )
        mask = mask.bool()
    if not mask.any(dim=1).all():
        empty = int((~mask.any(dim=1)).nonzero()[0])
        raise ValueError(f"every sample needs at least one observation; mask row {empty} is all False.")
    # Observed times must increase along each row (padding in between is fine).
    latest = torch.where(mask, times, torch.full_like(times, -math.inf)).cummax(dim=1).values
    before = torch.cat([torch.full_like(times[:, :1], -math.inf), latest[:, :-1]], dim=1)
    bad = mask & (times <= before)
    if bad.any():
        b, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"observed times must be strictly increasing within each sample; sample {b} has times[{b}, {j}] = "
            f"{float(times[b, j])} after an observation at {float(before[b, j])}. Sort each sequence by time."
        )
    return times, mask


def _first_observed_time(times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, times, torch.full_like(times, math.inf)).min(dim=1).values  # (B,)


def _as_t0(t0: torch.Tensor | float | None, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if t0 is None:
        return _first_observed_time(times, mask)
    t0 = torch.as_tensor(t0, dtype=times.dtype, device=times.device)
    return t0.expand(times.shape[0]) if t0.dim() == 0 else t0


# --------------------------------------------------------------------------------------------
# The parts.


class LatentODEFunc(ODEFunc):
    """Autonomous latent dynamics ``dz/dt = f(z)``: Linear-ELU-Linear-ELU-Linear.

    Shapes: ``z`` is ``(..., latent_dim)``; so is the result. ``t`` is ignored (the per-sample
    clock shift of :class:`LatentODE` relies on it).
    """

    def __init__(self, latent_dim: int = 4, hidden: int = 20) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, latent_dim)
        )

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class RecognitionRNN(nn.Module):
    """A GRU run backwards in time over observations; its final state gives ``q(z_{t0})``.

    Input at each observation ``i`` (visited from last to first): the observed values, the time
    gap to the observation read just before (the next one in time; 0 for the last), and
    ``t_i − t0``. A GRU rather than the reference's plain tanh RNN: it trains more steadily
    with 100-step sequences and the extra time inputs.

    Args:
        obs_dim: features per observation ``D``.
        latent_dim: ``L``.
        hidden: GRU units.
    """

    def __init__(self, obs_dim: int = 2, latent_dim: int = 4, hidden: int = 25) -> None:
        super().__init__()
        self.cell = nn.GRUCell(obs_dim + 2, hidden)
        self.out = nn.Linear(hidden, 2 * latent_dim)
        self.hidden = hidden

    def forward(
        self, values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor, t0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``values (B, T, D)``, ``times (B, T)``, ``mask (B, T)`` bool, ``t0 (B,)`` → mean, logvar ``(B, L)``."""
        B, T, _ = values.shape
        h = values.new_zeros(B, self.hidden)
        t_next = times.new_zeros(B)  # time of the observation read last (the next one in time)
        seen = torch.zeros(B, dtype=torch.bool, device=values.device)
        for j in reversed(range(T)):
            m = mask[:, j]
            if not bool(m.any()):
                continue
            t_j = times[:, j]
            gap = torch.where(seen, t_next - t_j, torch.zeros_like(t_j))
            x = torch.where(m[:, None], values[:, j], torch.zeros_like(values[:, j]))
            inp = torch.cat([x, gap[:, None].to(x.dtype), (t_j - t0)[:, None].to(x.dtype)], dim=1)  # (B, D + 2)
            h = torch.where(m[:, None], self.cell(inp, h), h)
            t_next = torch.where(m, t_j, t_next)
            seen = seen | m
        mean, logvar = self.out(h).chunk(2, dim=-1)
        return mean, logvar


def _decoder(latent_dim: int, obs_dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, obs_dim))


@dataclass(frozen=True)
class ELBOTerms:
    """Per-sample terms of the evidence lower bound; every field is ``(B,)`` except noted.

    Attributes:
        elbo: ``log_likelihood − kl``.
        log_likelihood: ``Σ`` over observed points and features of ``log N(x; x̂, s²)``.
        kl: ``KL(q(z_{t0}) ‖ N(0, I))``, analytic.
        predictions: the decoded trajectory at the input times, ``(B, T, D)`` (also at unobserved
            slots' times, which are meaningless for padding).
        z0: the latent initial states used, ``(B, L)``.
        qz0_mean, qz0_logvar: the recognition network's output, ``(B, L)``.
    """

    elbo: torch.Tensor
    log_likelihood: torch.Tensor
    kl: torch.Tensor
    predictions: torch.Tensor
    z0: torch.Tensor
    qz0_mean: torch.Tensor
    qz0_logvar: torch.Tensor


class LatentODE(nn.Module):
    """A latent ODE model (see the module docstring for the model and the per-sample time scheme).

    Args:
        obs_dim: features per observation ``D``.
        latent_dim: latent dimension ``L`` (reference: 4).
        rec_hidden: recognition GRU units (reference: 25).
        ode_hidden: hidden units of the dynamics MLP (reference: 20).
        dec_hidden: hidden units of the decoder (reference: 20).
        obs_std: the likelihood's fixed observation noise ``s`` (reference: 0.3).
        rtol, atol, method, options: passed to the ODE solver.
        adjoint: differentiate the solve by the adjoint method instead of backpropagating
            through the solver's steps.

    Attributes:
        func: the :class:`LatentODEFunc` (``func.nfe_forward``, ``func.nfe_backward`` count calls).
        encoder: the :class:`RecognitionRNN`.
        decoder: the decoder MLP.
    """

    def __init__(
        self,
        obs_dim: int = 2,
        latent_dim: int = 4,
        rec_hidden: int = 25,
        ode_hidden: int = 20,
        dec_hidden: int = 20,
        obs_std: float = 0.3,
        *,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        method: str = "dopri5",
        options: dict | None = None,
        adjoint: bool = False,
    ) -> None:
        super().__init__()
        if not obs_std > 0:
            raise ValueError(f"obs_std must be positive; got {obs_std!r}.")
        self.latent_dim = latent_dim
        self.obs_std = float(obs_std)
        self.encoder = RecognitionRNN(obs_dim, latent_dim, rec_hidden)
        self.func = LatentODEFunc(latent_dim, ode_hidden)
        self.decoder = _decoder(latent_dim, obs_dim, dec_hidden)
        self.rtol, self.atol, self.method, self.options, self.adjoint = rtol, atol, method, options, adjoint

    # -- pieces ------------------------------------------------------------------------------

    def encode(
        self,
        values: torch.Tensor,
        times: torch.Tensor,
        mask: torch.Tensor | None = None,
        t0: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q(z_{t0})`` from a batch: returns ``(mean (B, L), logvar (B, L), t0 (B,))``.

        ``t0`` is a number or ``(B,)``; by default each sample's first observed time.
        """
        times, mask = _check_inputs(values, times, mask)
        t0 = _as_t0(t0, times, mask)
        mean, logvar = self.encoder(values, times, mask, t0)
        return mean, logvar, t0

    def latent_trajectory(self, z0: torch.Tensor, t0: torch.Tensor, query_times: torch.Tensor) -> torch.Tensor:
        """Solve ``dz/dt = f(z)`` from ``z0`` at ``t0`` to each sample's own query times.

        Args:
            z0: ``(B, L)``.
            t0: ``(B,)`` (or a scalar): the time of each ``z0``.
            query_times: ``(Q,)`` shared or ``(B, Q)`` per sample; any order, before or after ``t0``.

        Returns:
            ``z`` at the query times, ``(B, Q, L)``.
        """
        B = z0.shape[0]
        t0 = torch.as_tensor(t0, dtype=query_times.dtype, device=query_times.device)
        per_sample_times = query_times.dim() == 2
        if query_times.dim() == 1:
            query_times = query_times.expand(B, -1)
        tau = query_times - (t0[:, None] if t0.dim() == 1 else t0)  # (B, Q): each sample on its own clock
        if (per_sample_times or t0.dim() == 1) and B > 1 and self._per_sample_ok():
            return self._per_sample_trajectory(z0, tau)
        # Time in float64 for the union, so nearly equal float32 times are not merged by accident.
        grid, inverse = torch.unique(tau.detach().to(torch.float64), sorted=True, return_inverse=True)  # (U,), (B, Q)
        solver = odeint_adjoint if self.adjoint else odeint
        kw: dict[str, Any] = dict(rtol=self.rtol, atol=self.atol, method=self.method, options=self.options)
        zero = grid.new_zeros(1)
        parts = []
        neg, pos = grid[grid < 0], grid[grid > 0]
        if neg.numel():  # backwards in time from τ = 0, then back into ascending order
            zs = solver(self.func, z0, torch.cat([zero, neg.flip(0)]), **kw)[1:]  # (n_neg, B, L)
            parts.append(zs.flip(0))
        if bool((grid == 0).any()):
            parts.append(z0[None])
        if pos.numel():
            parts.append(solver(self.func, z0, torch.cat([zero, pos]), **kw)[1:])  # (n_pos, B, L)
        zs = torch.cat(parts, dim=0).transpose(0, 1)  # (B, U, L)
        return zs.gather(1, inverse[..., None].expand(-1, -1, zs.shape[-1]))  # (B, Q, L)

    def _per_sample_ok(self) -> bool:
        """Per-sample step control needs an adaptive method and none of the options it lacks."""
        from ..solvers import get_tableau

        unsupported = {"step_t", "jump_t", "norm", "dense", "checkpoint", "per_sample"}
        return get_tableau(self.method).adaptive and not (set(self.options or {}) & unsupported)

    def _per_sample_trajectory(self, z0: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``z`` at each sample's own ``τ`` (``(B, Q)``, any order, duplicates allowed), by
        per-sample solves (``options={"per_sample": True}``): forwards over each row's ``τ >= 0``
        and, if any ``τ < 0``, backwards over its ``τ <= 0``, each sample on its own clock.

        A solve's rows must be strictly monotonic: each row ``[0, sorted τ]`` (entries of the other
        direction clamped to 0) has its repeats moved apart by ``δ = 1e-13 max(1, |τ|)`` per position
        (``s'_j = cummax(s_j - j δ) + j δ``); every query reads the state at the first entry of its
        run of equal values (``z0`` itself for ``τ = 0``), whose time is its own to within ``Q δ``.
        """
        B, Q = tau.shape
        tau64 = tau.detach().to(torch.float64)
        kw: dict[str, Any] = dict(
            rtol=self.rtol,
            atol=self.atol,
            method=self.method,
            options={**(self.options or {}), "per_sample": "compact"},
        )
        solver = odeint_adjoint if self.adjoint else odeint
        out = z0.new_zeros(B, Q, z0.shape[-1])
        for sign in (1.0, -1.0):
            part = tau64 > 0 if sign > 0 else tau64 < 0
            if sign < 0 and not bool(part.any()):
                continue
            s, perm = torch.sort((tau64 * sign).clamp(min=0.0), dim=1)  # (B, Q) ascending, >= 0
            seq = torch.cat([torch.zeros_like(s[:, :1]), s], 1)  # (B, 1 + Q): the start, then the queries
            j = torch.arange(Q + 1, dtype=torch.float64, device=s.device)
            delta = 1e-13 * max(1.0, float(s.max()))
            times = (torch.cummax(seq - j * delta, dim=1).values + j * delta) * sign  # strictly monotonic rows
            # Each query reads the first entry of its run of equal values (the start for τ = 0).
            new_run = seq[:, 1:] != seq[:, :-1]
            idx = torch.arange(1, Q + 1, device=s.device).expand(B, -1)
            first = torch.cummax(torch.where(new_run, idx, torch.zeros_like(idx)), dim=1).values  # (B, Q)
            zs = solver(self.func, z0, times, **kw)  # (1 + Q, B, L)
            zs = zs.transpose(0, 1).gather(1, first[..., None].expand(-1, -1, zs.shape[-1]))  # (B, Q, L), sorted order
            unsorted = torch.empty_like(zs).scatter(1, perm[..., None].expand_as(zs), zs)
            use = part if sign < 0 else ~(tau64 < 0)
            out = torch.where(use[..., None], unsorted, out)
        return out

    # -- the objective -----------------------------------------------------------------------

    def elbo(
        self,
        values: torch.Tensor,
        times: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        t0: torch.Tensor | float | None = None,
        sample: bool = True,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> ELBOTerms:
        """The ELBO of each sample of a batch (one reparameterised sample of ``z_{t0}``).

        Args:
            values, times, mask: the batch (see the module docstring).
            t0: the time of ``z_{t0}``: a number or ``(B,)``; default each sample's first observation.
            sample: draw ``z_{t0} = μ + σ ε``; ``False`` uses the mean (deterministic).
            generator: the source of ``ε``.
            eps: ``ε`` itself, ``(B, latent_dim)`` (instead of drawing it): a data-parallel shard
                takes its rows of the global batch's draw, so it matches a single process.

        Returns:
            :class:`ELBOTerms`; train by minimising ``-terms.elbo.mean()``.
        """
        times_b, mask_b = _check_inputs(values, times, mask)
        t0 = _as_t0(t0, times_b, mask_b)
        mean, logvar = self.encoder(values, times_b, mask_b, t0)
        z0 = mean
        if sample:
            if eps is None:
                eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            elif eps.shape != mean.shape:
                raise ValueError(
                    f"eps must have shape {tuple(mean.shape)} (batch, latent_dim); got {tuple(eps.shape)}."
                )
            z0 = mean + torch.exp(0.5 * logvar) * eps
        # Padded slots are solved at t0 so they add nothing to the union of times.
        query = torch.where(mask_b, times_b, t0[:, None].expand_as(times_b))
        pred = self.decoder(self.latent_trajectory(z0, t0, query))  # (B, T, D)
        var = self.obs_std**2
        logp = -0.5 * (_LOG_2PI + math.log(var) + (values - pred) ** 2 / var)  # (B, T, D)
        # where, not multiplication, so NaN or inf in unobserved slots cannot leak in.
        log_likelihood = torch.where(mask_b[..., None], logp, torch.zeros_like(logp)).sum(dim=(1, 2))
        kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).sum(dim=-1)
        return ELBOTerms(log_likelihood - kl, log_likelihood, kl, pred, z0, mean, logvar)

    # -- prediction --------------------------------------------------------------------------

    # The predictions alone, or (predictions, latent) with return_latent=True.
    @overload
    def predict(
        self,
        values: torch.Tensor,
        times: torch.Tensor,
        mask: torch.Tensor | None,
        query_times: torch.Tensor,
        *,
        t0: torch.Tensor | float | None = ...,
        sample: bool = ...,
        generator: torch.Generator | None = ...,
        return_latent: Literal[False] = False,
    ) -> torch.Tensor: ...
    @overload
    def predict(
        self,
        values: torch.Tensor,
        times: torch.Tensor,
        mask: torch.Tensor | None,
        query_times: torch.Tensor,
        *,
        t0: torch.Tensor | float | None = ...,
        sample: bool = ...,
        generator: torch.Generator | None = ...,
        return_latent: Literal[True],
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def predict(
        self,
        values: torch.Tensor,
        times: torch.Tensor,
        mask: torch.Tensor | None,
        query_times: torch.Tensor,
        *,
        t0: torch.Tensor | float | None = ...,
        sample: bool = ...,
        generator: torch.Generator | None = ...,
        return_latent: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
    def predict(
        self,
        values: torch.Tensor,
        times: torch.Tensor,
        mask: torch.Tensor | None,
        query_times: torch.Tensor,
        *,
        t0: torch.Tensor | float | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
        return_latent: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encode the observations, then decode at arbitrary query times (interpolation,
        extrapolation forwards, or backwards before the first observation).

        Args:
            values, times, mask, t0: as for :meth:`elbo`.
            query_times: ``(Q,)`` or ``(B, Q)``, any order, on the same clock as ``times``.
            sample: decode a posterior sample instead of the posterior mean.
            generator: the source of that sample's noise.
            return_latent: also return the latent trajectory.

        Returns:
            Predictions ``(B, Q, D)`` (and the latent ``(B, Q, L)`` if ``return_latent``).
        """
        mean, logvar, t0 = self.encode(values, times, mask, t0)
        z0 = mean
        if sample:
            z0 = mean + torch.exp(0.5 * logvar) * torch.randn(
                mean.shape, generator=generator, dtype=mean.dtype, device=mean.device
            )
        zs = self.latent_trajectory(z0, t0, query_times.to(values.dtype))
        xs = self.decoder(zs)
        return (xs, zs) if return_latent else xs

    # The same operation under the names users look for.
    reconstruct = predict
    extrapolate = predict


# --------------------------------------------------------------------------------------------
# The baseline.


class RNNBaseline(nn.Module):
    """A GRU that reads (observation, time since the previous observation) and predicts ahead.

    At each slot ``j`` in time order, the model first *predicts* ``x_j`` from its state and the
    time elapsed since the last observation it read, ``x̂_j = W [h, t_j − t_last] + b``, and then,
    if ``x_j`` is observed, reads it: ``h = GRU([x_j, t_j − t_last], h)``. Training minimises the
    squared error of these one-step-ahead predictions at observed slots (not counting each
    sample's first observation, which it predicts from no data). Reconstruction is these
    predictions at every window slot (a filter: each point is predicted from the observations
    before it). **Extrapolation is autoregressive**: after the last observation the model feeds
    each prediction back in as if it were observed, at the query times in order.

    Args:
        obs_dim: features per observation.
        hidden: GRU units (the paper's comparison: 25).
    """

    def __init__(self, obs_dim: int = 2, hidden: int = 25) -> None:
        super().__init__()
        self.cell = nn.GRUCell(obs_dim + 1, hidden)
        self.head = nn.Linear(hidden + 1, obs_dim)
        self.hidden = hidden

    def _step(self, h, t_last, seen, t_j, x=None, m=None):
        dt = torch.where(seen, t_j - t_last, torch.zeros_like(t_j))[:, None].to(h.dtype)
        pred = self.head(torch.cat([h, dt], dim=1))
        if x is None:
            return pred, h, t_last, seen
        x = torch.where(m[:, None], x, torch.zeros_like(x))
        h = torch.where(m[:, None], self.cell(torch.cat([x, dt], dim=1), h), h)
        return pred, h, torch.where(m, t_j, t_last), seen | m

    def filter(
        self, values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-step-ahead predictions at every slot.

        Returns:
            ``(predictions (B, T, D), scored (B, T) bool)``: ``scored`` marks observed slots after
            each sample's first observation, the ones the training loss uses.
        """
        preds, scored, _ = self._run(values, times, mask)
        return preds, scored

    def _run(self, values, times, mask):
        times, mask = _check_inputs(values, times, mask)
        B, T, _ = values.shape
        h = values.new_zeros(B, self.hidden)
        t_last = times.new_zeros(B)
        seen = torch.zeros(B, dtype=torch.bool, device=values.device)
        preds, scored = [], []
        for j in range(T):
            scored.append(mask[:, j] & seen)
            pred, h, t_last, seen = self._step(h, t_last, seen, times[:, j], values[:, j], mask[:, j])
            preds.append(pred)
        return torch.stack(preds, dim=1), torch.stack(scored, dim=1), (h, t_last, seen)

    def loss(self, values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error of the one-step-ahead predictions at scored slots (a scalar)."""
        pred, scored = self.filter(values, times, mask)
        err = ((pred - values) ** 2).sum(-1)
        return torch.where(scored, err, torch.zeros_like(err)).sum() / (scored.sum().clamp(min=1) * values.shape[-1])

    def extrapolate(
        self, values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None, future_times: torch.Tensor
    ) -> torch.Tensor:
        """Read the observations, then predict at ``future_times`` (``(F,)`` or ``(B, F)``, increasing,
        after the last observation) autoregressively. Returns ``(B, F, D)``."""
        _, _, (h, t_last, seen) = self._run(values, times, mask)
        B = values.shape[0]
        if future_times.dim() == 1:
            future_times = future_times.expand(B, -1)
        future_times = future_times.to(times.dtype)
        all_obs = torch.ones(B, dtype=torch.bool, device=values.device)
        out = []
        for j in range(future_times.shape[1]):
            pred, _, _, _ = self._step(h, t_last, seen, future_times[:, j])
            _, h, t_last, seen = self._step(h, t_last, seen, future_times[:, j], pred, all_obs)
            out.append(pred)
        return torch.stack(out, dim=1)
