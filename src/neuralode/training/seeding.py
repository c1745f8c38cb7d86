"""Seeding: the global generators at the start of a run, their state in a checkpoint, and
per-step generators that make every random draw a function of ``(seed, step)``.

A task that draws step ``k``'s minibatch and noise from :func:`step_generator` ``(seed, k)``
carries no data-order state from step to step, so a resumed run follows the same trajectory as
one that never stopped, whatever step it stopped at.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CUDA's too, when present)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for draw ``stream`` (0..15) of step ``step`` of a run seeded with ``seed``."""
    if not 0 <= stream < 16:
        raise ValueError(f"stream must be in 0..15; got {stream!r}.")
    return torch.Generator().manual_seed(((seed * 1_000_003) + step) * 16 + stream)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global generators' states as checkpoint-ready data (tensors, numbers, lists)."""
    # numpy's stubs type the no-argument call as legacy=False's dict; the default, legacy=True, gives
    # the MT19937 tuple (name, keys, pos, has_gauss, cached_gaussian) for the global generator.
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
