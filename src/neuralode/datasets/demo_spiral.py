"""Datasets and generators. Everything random takes a seed or a ``torch.Generator``.

Sections:

* the spiral of the paper's reference demo (``torchdiffeq/examples/ode_demo.py``): the true
  dynamics, the trajectory generated from them, and minibatches of sub-trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..solvers import odeint

__all__ = ["SPIRAL_A", "SPIRAL_Y0", "spiral_dynamics", "SpiralData", "make_spiral_data", "sample_subtrajectories"]

# --------------------------------------------------------------------------------------------
# The spiral: dy/dt = y**3 @ A, a cubic oscillator whose orbit decays slowly towards the origin.

#: The spiral's matrix: ``dy/dt = (y ** 3) @ SPIRAL_A`` (row vector times matrix, as in
#: torchdiffeq's ``ode_demo.py``).
SPIRAL_A: tuple[tuple[float, float], tuple[float, float]] = ((-0.1, 2.0), (-2.0, -0.1))
#: The spiral's initial state.
SPIRAL_Y0: tuple[float, float] = (2.0, 0.0)


def spiral_dynamics(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The true spiral vector field ``dy/dt = (y ** 3) @ A`` with ``A = SPIRAL_A``.

    Args:
        t: time (unused: the system is autonomous); kept for the ``func(t, y)`` convention.
        y: states, shape ``(..., 2)``, any floating dtype.

    Returns:
        ``dy/dt``, shape ``(..., 2)``, ``y``'s dtype and device.
    """
    a = torch.tensor(SPIRAL_A, dtype=y.dtype, device=y.device)
    return (y**3) @ a


@dataclass(frozen=True)
class SpiralData:
    """A trajectory of the spiral.

    Attributes:
        t: times, shape ``(n_points,)``.
        y: states at ``t``, shape ``(n_points, 2)``; observation noise included if any was asked.
    """

    t: torch.Tensor
    y: torch.Tensor


def make_spiral_data(
    n_points: int = 1000,
    t_end: float = 25.0,
    *,
    noise_std: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    rtol: float = 1e-7,
    atol: float = 1e-9,
) -> SpiralData:
    """Solve the spiral from ``SPIRAL_Y0`` with dopri5 and return its trajectory.

    The solve runs in float64 at the given tolerances and the result is cast to ``dtype``, so the
    data are the same whatever precision the model trains in.

    Args:
        n_points: number of equally spaced times in ``[0, t_end]`` (at least 2).
        t_end: final time (positive).
        noise_std: standard deviation of Gaussian noise added to the states (0 for none).
        seed: seeds the noise; the noise-free trajectory does not depend on it.
        dtype: floating dtype of the returned tensors.
        rtol, atol: tolerances of the dopri5 solve.

    Returns:
        A :class:`SpiralData` with ``t`` of shape ``(n_points,)`` and ``y`` of shape ``(n_points, 2)``.

    Raises:
        ValueError: if ``n_points < 2``, ``t_end <= 0`` or ``noise_std < 0``.
    """
    if int(n_points) != n_points or n_points < 2:
        raise ValueError(f"n_points must be an integer of at least 2; got {n_points!r}.")
    if not t_end > 0:
        raise ValueError(f"t_end must be positive; got {t_end!r}.")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be non-negative; got {noise_std!r}.")
    t = torch.linspace(0.0, t_end, int(n_points), dtype=torch.float64)
    y0 = torch.tensor(SPIRAL_Y0, dtype=torch.float64)
    with torch.no_grad():
        y = odeint(spiral_dynamics, y0, t, rtol=rtol, atol=atol, method="dopri5")  # (n_points, 2)
    if noise_std > 0:
        gen = torch.Generator().manual_seed(seed)
        y = y + noise_std * torch.randn(y.shape, generator=gen, dtype=torch.float64)
    return SpiralData(t=t.to(dtype), y=y.to(dtype))


def sample_subtrajectories(
    data: SpiralData, batch_size: int, batch_time: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` random windows of ``batch_time`` consecutive points from a trajectory.

    All windows share the relative times ``t[:batch_time] - t[0]``, which is exact for an
    equally spaced ``t`` and an autonomous system (the spiral is both).

    Args:
        data: the trajectory; ``data.t`` must be equally spaced.
        batch_size: number of windows (at least 1).
        batch_time: points per window (at least 2, at most ``len(data.t)``).
        generator: source of randomness for the window starts.

    Returns:
        ``(y0, t, y)``: starting states ``(batch_size, 2)``, relative times ``(batch_time,)`` and
        the true states ``(batch_time, batch_size, 2)``, time first as ``odeint`` returns it.

    Raises:
        ValueError: if ``batch_size`` or ``batch_time`` is out of range.
    """
    n = data.t.shape[0]
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size!r}.")
    if not 2 <= batch_time <= n:
        raise ValueError(f"batch_time must be between 2 and the trajectory length {n}; got {batch_time!r}.")
    starts = torch.randint(0, n - batch_time + 1, (batch_size,), generator=generator)  # (batch,)
    idx = starts.unsqueeze(0) + torch.arange(batch_time).unsqueeze(1)  # (batch_time, batch)
    return data.y[starts], data.t[:batch_time] - data.t[0], data.y[idx]
