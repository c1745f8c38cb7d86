"""Continuous normalizing flows (Chen et al. 2018, section 4; Grathwohl et al. 2019, FFJORD).

A CNF moves samples with ``dz/dt = f(z, t)``; the log-density along a trajectory obeys the
instantaneous change of variables ``d log p(z(t)) / dt = -tr(∂f/∂z)``. Solving the pair
``(z, log p)`` maps data to a standard normal base density and back.

**Time convention.** Data lives at ``t = 0`` and the base density at ``t = T`` (FFJORD's
convention). :meth:`CNF.log_prob` integrates ``x`` forward from ``0`` to ``T``::

    z(T) = x + ∫_0^T f(z, t) dt,   Δ(T) = -∫_0^T tr(∂f/∂z) dt,
    log p(x) = log N(z(T); 0, I) - Δ(T)

and :meth:`CNF.sample` draws ``z(T) ~ N(0, I)`` and integrates backwards from ``T`` to ``0``.

**Trace.** ``"exact"`` sums ``∂f_i/∂z_i`` with one vector-Jacobian product per dimension (cheap
for the 2-D toy problems); ``"hutchinson"`` uses ``εᵀ (∂f/∂z) ε`` with a single VJP per
evaluation (FFJORD), where ``ε`` (Gaussian or Rademacher) is drawn once at the start of each
solve and held fixed across it, so the solver sees a smooth ODE.

**Regularisation** (Finlay et al. 2020, "How to train your neural ODE"): with
``kinetic=True`` the state carries ``∫‖f‖² dt`` and with ``jacobian=True`` ``∫‖∂f/∂z‖²_F dt``;
the latter is the exact sum of squared Jacobian rows under the exact trace, and the Hutchinson
estimate ``‖εᵀ ∂f/∂z‖²`` (reusing the trace's VJP) otherwise. Both are per-sample integrals;
training adds ``λ_K · mean(KE) + λ_J · mean(JF)`` to the negative log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from ..solvers import odeint, odeint_adjoint
from .layers import ConcatLinear, ODEFunc

TRACE_ESTIMATORS = ("exact", "hutchinson")
NOISE_TYPES = ("gaussian", "rademacher")
NONLINEARITIES = ("tanh", "softplus")
#: Absolute tolerance given to the regularisation states: their error never limits the step.
_IGNORED_ATOL = 1e8


def _activation(name: str) -> nn.Module:
    if name == "tanh":
        return nn.Tanh()
    if name == "softplus":
        return nn.Softplus()
    raise ValueError(f"nonlinearity must be one of {', '.join(NONLINEARITIES)}; got {name!r}.")


class ConcatMLP(nn.Module):
    """FFJORD-style dynamics: ``ConcatLinear`` layers (time appended to every layer's input).

    Args:
        dim: data dimension ``D``.
        hidden_dims: widths of the hidden layers, e.g. ``(64, 64, 64)``.
        nonlinearity: ``"tanh"`` or ``"softplus"`` (smooth, as the trace needs derivatives).

    Shapes: ``forward(t, z)`` with ``t`` 0-dim and ``z`` ``(batch, D)`` returns ``(batch, D)``.
    """

    def __init__(self, dim: int, hidden_dims: Sequence[int] = (64, 64, 64), nonlinearity: str = "tanh") -> None:
        super().__init__()
        dims = [dim, *[int(h) for h in hidden_dims], dim]
        self.layers = nn.ModuleList(ConcatLinear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = _activation(nonlinearity)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class HyperNetDynamics(nn.Module):
    """The paper's CNF dynamics: ``M`` planar units whose parameters are functions of time.

    A small hypernetwork maps ``t`` to ``(W, b, U, G)`` and (Chen et al. 2018, appendix; the
    reference code's ``examples/cnf.py``)::

        f(z, t) = (1/M) Σ_m  (u_m ⊙ σ(g_m)) tanh(w_mᵀ z + b_m)

    with a sigmoid gate ``σ(g_m)`` on each output direction. This is a planar flow made
    continuous and wide: the trace is cheap in principle, but it is computed like any other
    dynamics here.

    Args:
        dim: data dimension ``D``.
        width: number of planar units ``M``.
        hidden_dim: width of the hypernetwork's two hidden layers.
    """

    def __init__(self, dim: int, width: int = 64, hidden_dim: int = 32) -> None:
        super().__init__()
        self.dim, self.width = dim, width
        self.hyper = nn.Sequential(
            nn.Linear(1, hidden_dim),
            nn.Tanh(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.Tanh(),
            nn.Linear(hidden_dim, 3 * width * dim + width),
        )

    def parameters_at(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W, b, U)`` at time ``t``: shapes ``(M, D)``, ``(M,)``, ``(M, D)`` (``U`` already gated)."""
        p = self.hyper(t.to(dtype).reshape(1, 1)).reshape(-1)  # (3 M D + M,)
        n = self.width * self.dim
        w = p[:n].view(self.width, self.dim)
        u = p[n : 2 * n].view(self.width, self.dim)
        g = p[2 * n : 3 * n].view(self.width, self.dim)
        b = p[3 * n :]
        return w, b, u * torch.sigmoid(g)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        w, b, u = self.parameters_at(t, z.dtype)
        h = torch.tanh(z @ w.T + b)  # (batch, M)
        return h @ u / self.width  # (batch, D)


class CNFDynamics(ODEFunc):
    """The augmented right-hand side over ``(z, Δlogp[, kinetic][, jacobian])``.

    ``forward(t, state)`` returns ``(f, -tr(∂f/∂z), [‖f‖²], [‖∂f/∂z‖²_F])``, each per sample:
    shapes ``(batch, D)``, then ``(batch, 1)`` for each scalar state.

    Args:
        net: ``net(t, z) -> dz/dt`` with ``z`` of shape ``(batch, D)``.
        trace: ``"exact"`` or ``"hutchinson"``.
        noise: ``"gaussian"`` or ``"rademacher"`` (Hutchinson only).
        kinetic, jacobian: carry the regularisation integrals as extra states.

    Call :meth:`reset_noise` before each solve (:class:`CNF` does): the Hutchinson noise is drawn
    at the first evaluation after it and reused until the next reset.
    """

    def __init__(
        self,
        net: nn.Module,
        trace: str = "exact",
        noise: str = "gaussian",
        kinetic: bool = False,
        jacobian: bool = False,
    ) -> None:
        super().__init__()
        if trace not in TRACE_ESTIMATORS:
            raise ValueError(f"trace must be one of {', '.join(TRACE_ESTIMATORS)}; got {trace!r}.")
        if noise not in NOISE_TYPES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_TYPES)}; got {noise!r}.")
        self.net = net
        self.trace = trace
        self.noise = noise
        self.kinetic = kinetic
        self.jacobian = jacobian
        self._eps: torch.Tensor | None = None

    @property
    def n_states(self) -> int:
        """Number of tensors in the state tuple."""
        return 2 + int(self.kinetic) + int(self.jacobian)

    def reset_noise(self, eps: torch.Tensor | None = None) -> None:
        """Forget the Hutchinson noise (a new one is drawn at the next call), or fix it to ``eps``."""
        self._eps = eps

    def _noise_like(self, z: torch.Tensor) -> torch.Tensor:
        if self._eps is None or self._eps.shape != z.shape:
            if self.noise == "gaussian":
                self._eps = torch.randn_like(z)
            else:
                self._eps = torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1
        return self._eps

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        z = state[0]  # (batch, D)
        # Under no_grad (a forward solve for the adjoint, or evaluation) the trace still needs a
        # graph of f, but not a graph *of the trace*: create_graph only when gradients flow.
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            f = self.net(t, z)  # (batch, D)
            if self.trace == "exact":
                rows = [
                    torch.autograd.grad(f[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0]
                    for i in range(z.shape[1])
                ]  # D tensors (batch, D): row i of ∂f/∂z per sample
                # D >= 1 terms, so neither sum is its start value 0: a tensor.
                div = cast(torch.Tensor, sum(r[:, i] for i, r in enumerate(rows)))  # (batch,)
                frob = cast(torch.Tensor, sum((r * r).sum(1) for r in rows)) if self.jacobian else None
            else:
                eps = self._noise_like(z)
                e_jac = torch.autograd.grad(f, z, eps, create_graph=create_graph)[0]  # εᵀ ∂f/∂z
                div = (e_jac * eps).sum(1)
                frob = (e_jac * e_jac).sum(1) if self.jacobian else None
        if not create_graph:
            f, div = f.detach(), div.detach()
            frob = frob.detach() if frob is not None else None
        out = [f, -div.unsqueeze(1)]
        if self.kinetic:
            out.append((f * f).sum(1, keepdim=True))
        if frob is not None:  # exactly when self.jacobian
            out.append(frob.unsqueeze(1))
        return tuple(out)


def standard_normal_logprob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dimension: ``(batch, D) -> (batch,)``."""
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class CNF(nn.Module):
    """A continuous normalizing flow with a standard normal base density.

    Args:
        dim: data dimension ``D``.
        net: the dynamics ``net(t, z)``; default an FFJORD-style :class:`ConcatMLP`.
        T: integration time; data at ``t = 0``, base at ``t = T``.
        trace, noise: see :class:`CNFDynamics`.
        kinetic, jacobian: carry the regularisation integrals (returned by :meth:`forward`).
        rtol, atol, method: solver settings (dopri5 at 1e-5 as FFJORD's toy experiments).
        adjoint: differentiate by the adjoint method (else backpropagation through the solver).

    Attributes:
        dynamics: the :class:`CNFDynamics` (``nfe_forward`` / ``nfe_backward`` live there).
    """

    def __init__(
        self,
        dim: int,
        net: nn.Module | None = None,
        T: float = 1.0,
        trace: str = "exact",
        noise: str = "gaussian",
        kinetic: bool = False,
        jacobian: bool = False,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        method: str = "dopri5",
        adjoint: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer; got {dim!r}.")
        if not T > 0:
            raise ValueError(f"T must be positive; got {T!r}.")
        self.dim = dim
        self.T = float(T)
        self.dynamics = CNFDynamics(net if net is not None else ConcatMLP(dim), trace, noise, kinetic, jacobian)
        self.rtol, self.atol, self.method, self.adjoint = rtol, atol, method, adjoint

    @property
    def nfe_forward(self) -> int:
        return self.dynamics.nfe_forward

    @property
    def nfe_backward(self) -> int:
        return self.dynamics.nfe_backward

    def _check(self, x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor of shape (batch, {self.dim}); got {type(x).__name__}."
            )
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (batch, {self.dim}); got {tuple(x.shape)}.")

    def integrate(
        self, z0: torch.Tensor, times: Sequence[float] | torch.Tensor, *, adjoint: bool | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Solve the augmented ODE from ``z0`` at ``times[0]`` through ``times``.

        Returns:
            The state tuple with a leading time axis: ``z`` ``(len(times), batch, D)``, ``Δlogp``
            ``(len(times), batch, 1)``, then the regularisation integrals if enabled.
        """
        t = torch.as_tensor(times, dtype=torch.float64, device=z0.device)
        zeros = torch.zeros(z0.shape[0], 1, dtype=z0.dtype, device=z0.device)
        state = (z0, *([zeros] * (self.dynamics.n_states - 1)))
        self.dynamics.reset_noise()
        use_adjoint = self.adjoint if adjoint is None else adjoint
        # The regularisation integrals are pure quadratures (nothing feeds back from them), so,
        # as the adjoint's seminorm does for parameter gradients, they are left out of the step
        # size control: a huge absolute tolerance makes their error count for nothing. Counting
        # them (FFJORD-RNODE's default) costs evaluations, the very thing they aim to save.
        n_reg = self.dynamics.n_states - 2
        rtol = self.rtol if n_reg == 0 else (self.rtol, self.rtol, *([self.rtol] * n_reg))
        atol = self.atol if n_reg == 0 else (self.atol, self.atol, *([_IGNORED_ATOL] * n_reg))
        kwargs: dict[str, Any] = dict(rtol=rtol, atol=atol, method=self.method)
        if use_adjoint and torch.is_grad_enabled():
            return odeint_adjoint(self.dynamics, state, t, adjoint_params=tuple(self.dynamics.parameters()), **kwargs)
        return odeint(self.dynamics, state, t, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Map data to the base: ``(z(T), log p(x), *regularisers)``.

        Returns:
            ``z`` ``(batch, D)``, ``log p(x)`` ``(batch,)``, then ``∫‖f‖²`` and / or
            ``∫‖∂f/∂z‖²_F`` ``(batch,)`` when enabled.
        """
        self._check(x, "x")
        states = self.integrate(x, [0.0, self.T])
        z, dlogp = states[0][-1], states[1][-1, :, 0]
        logpx = standard_normal_logprob(z) - dlogp
        return (z, logpx, *(s[-1, :, 0] for s in states[2:]))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` in nats, shape ``(batch,)``, for data ``x`` of shape ``(batch, D)``."""
        return self.forward(x)[1]

    def sample_with_log_prob(
        self,
        n: int | None = None,
        *,
        z: torch.Tensor | None = None,
        times: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw samples by integrating base draws from ``T`` back to ``0``, tracking their density.

        Args:
            n: number of samples (ignored when ``z`` is given).
            z: base points ``(batch, D)`` to push through the flow instead of fresh draws.
            times: output times, decreasing from ``T`` to ``0``; default ``[T, 0]``.
            generator: for the base draws.

        Returns:
            ``x`` and ``log p(x)``: ``(batch, D)`` and ``(batch,)``; or, when ``times`` is
            given, ``(len(times), batch, D)`` and ``(len(times), batch)`` — the density of
            each intermediate point under the flow's marginal at that time.
        """
        p = next(self.parameters())
        if z is None:
            if n is None or n < 1:
                raise ValueError(f"n must be a positive integer when z is not given; got {n!r}.")
            z = torch.randn(n, self.dim, generator=generator, dtype=p.dtype, device="cpu").to(p.device)
        else:
            self._check(z, "z")
        times_ = [self.T, 0.0] if times is None else list(times)
        states = self.integrate(z, times_)
        # Integrating T -> s, Δ(s) = -∫_T^s tr dt = ∫_s^T tr dt; log p_s(z(s)) = log N(z(T)) + Δ(s).
        logp = standard_normal_logprob(z).unsqueeze(0) + states[1][..., 0]
        if times is None:
            return states[0][-1], logp[-1]
        return states[0], logp

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples from the model, shape ``(n, D)``."""
        return self.sample_with_log_prob(n, generator=generator)[0]

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Map base points ``z`` ``(batch, D)`` to data space (the flow at ``t = 0``)."""
        return self.sample_with_log_prob(z=z)[0]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Map data ``x`` ``(batch, D)`` to base space (the flow at ``t = T``)."""
        return self.forward(x)[0]


def build_cnf(
    dim: int = 2,
    *,
    arch: str = "mlp",
    hidden_dims: Sequence[int] = (64, 64, 64),
    nonlinearity: str = "tanh",
    width: int = 64,
    hyper_hidden: int = 32,
    **kwargs,
) -> CNF:
    """A :class:`CNF` with ``arch="mlp"`` (:class:`ConcatMLP`) or ``arch="hyper"``
    (:class:`HyperNetDynamics`); other keyword arguments go to :class:`CNF`."""
    if arch == "mlp":
        net: nn.Module = ConcatMLP(dim, hidden_dims, nonlinearity)
    elif arch == "hyper":
        net = HyperNetDynamics(dim, width=width, hidden_dim=hyper_hidden)
    else:
        raise ValueError(f"arch must be 'mlp' or 'hyper'; got {arch!r}.")
    return CNF(dim, net, **kwargs)
