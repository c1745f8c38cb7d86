"""Toy 2-D densities for continuous normalizing flows, generated on the fly and seeded.

The six shapes of FFJORD's toy experiments (Grathwohl et al. 2019): ``8gaussians``, ``moons``,
``circles``, ``pinwheel``, ``checkerboard`` and ``2spirals``, drawn at the same scales (points
mostly within ``[-4, 4]²``), so NLLs are comparable with published numbers. Every draw comes from
a ``torch.Generator``: the same seed gives the same points.

``sample_toy("8gaussians", 512, seed=0)`` returns a float32 tensor of shape ``(512, 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "eight_gaussians",
    "moons",
    "circles",
    "pinwheel",
    "checkerboard",
    "two_spirals",
    "TOY_DATASETS",
    "sample_toy",
]

Generator = torch.Generator


def _rand(n: int, g: Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)


def _randn(*shape: int, g: Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def eight_gaussians(n: int, g: Generator) -> torch.Tensor:
    """Eight Gaussians (std 0.5/√2) on a circle of radius 4/√2 = 2.83."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    centers = 4.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)  # (8, 2)
    idx = torch.randint(0, 8, (n,), generator=g)
    points = _randn(n, 2, g=g) * 0.5 + centers[idx]
    return points / math.sqrt(2.0)


def moons(n: int, g: Generator) -> torch.Tensor:
    """Two interleaved half circles (scikit-learn's ``make_moons``, noise 0.1), scaled by 2 and shifted."""
    n_out = n // 2
    n_in = n - n_out
    a_out = _rand(n_out, g) * math.pi
    a_in = _rand(n_in, g) * math.pi
    outer = torch.stack([torch.cos(a_out), torch.sin(a_out)], 1)
    inner = torch.stack([1 - torch.cos(a_in), 1 - torch.sin(a_in) - 0.5], 1)
    x = torch.cat([outer, inner])[torch.randperm(n, generator=g)]
    x = x + 0.1 * _randn(n, 2, g=g)
    return x * 2 + torch.tensor([-1.0, -0.2], dtype=torch.float64)


def circles(n: int, g: Generator) -> torch.Tensor:
    """Two concentric circles (radii 3 and 1.5) with Gaussian noise 0.08 · 3."""
    n_out = n // 2
    n_in = n - n_out
    angles = _rand(n, g) * 2 * math.pi
    radius = torch.cat([torch.ones(n_out, dtype=torch.float64), 0.5 * torch.ones(n_in, dtype=torch.float64)])
    radius = radius[torch.randperm(n, generator=g)]
    x = radius.unsqueeze(1) * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    return 3 * (x + 0.08 * _randn(n, 2, g=g))


def pinwheel(n: int, g: Generator) -> torch.Tensor:
    """Five curved arms: radial/tangential noise (0.3, 0.1) bent by ``0.25 · exp(radius)``."""
    classes, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    rads = torch.arange(classes, dtype=torch.float64) * (2 * math.pi / classes)
    features = _randn(n, 2, g=g) * torch.tensor([radial_std, tangential_std], dtype=torch.float64)
    features[:, 0] += 1.0
    labels = torch.randint(0, classes, (n,), generator=g)
    angles = rads[labels] + rate * torch.exp(features[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)  # (n, 2, 2)
    return 2 * torch.einsum("ni,nji->nj", features, rot)


def checkerboard(n: int, g: Generator) -> torch.Tensor:
    """A 4x4 checkerboard on ``[-4, 4]²`` with uniform density on the dark squares."""
    x1 = _rand(n, g) * 4 - 2
    x2 = _rand(n, g) - torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2
    x2 = x2 + torch.floor(x1) % 2
    return 2 * torch.stack([x1, x2], 1)


def two_spirals(n: int, g: Generator) -> torch.Tensor:
    """Two interleaved spirals of 1.5 turns, point symmetric, with noise 0.1."""
    half = n // 2
    r = torch.sqrt(_rand(n - half, g)) * 540 * (2 * math.pi) / 360
    d1 = torch.stack([-torch.cos(r) * r + _rand(n - half, g) * 0.5, torch.sin(r) * r + _rand(n - half, g) * 0.5], 1)
    x = torch.cat([d1, -d1[:half]])[torch.randperm(n, generator=g)] / 3
    return x + 0.1 * _randn(n, 2, g=g)


TOY_DATASETS: dict[str, Callable[[int, Generator], torch.Tensor]] = {
    "8gaussians": eight_gaussians,
    "moons": moons,
    "circles": circles,
    "pinwheel": pinwheel,
    "checkerboard": checkerboard,
    "2spirals": two_spirals,
}


def sample_toy(
    name: str,
    n: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` points of the toy density ``name``, shape ``(n, 2)``.

    Args:
        name: one of ``TOY_DATASETS`` (``8gaussians``, ``moons``, ``circles``, ``pinwheel``,
            ``checkerboard``, ``2spirals``).
        n: number of points.
        seed: seeds a fresh generator (reproducible draws); ignored when ``generator`` is given.
        generator: draw from this generator (a training loop passes one to get a stream).
        dtype: of the result (the points are drawn in float64).

    Raises:
        ValueError: unknown ``name`` or ``n < 1``.
    """
    if name not in TOY_DATASETS:
        raise ValueError(f"name must be one of {', '.join(TOY_DATASETS)}; got {name!r}.")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}.")
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(0 if seed is None else int(seed))
    return TOY_DATASETS[name](n, generator).to(dtype)
