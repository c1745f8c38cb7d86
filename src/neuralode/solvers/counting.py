"""Funcs that count their own calls, inside compiled runs of steps.

A module that counts its calls (``self.nfe += 1``, as torchdiffeq's examples and :class:`neuralode.models.ODEFunc`
do) has a side effect that a compiled ``while_loop`` cannot hold, so such a ``func`` could not run inside the
device run or the grid run (:mod:`neuralode.solvers.fast`). A ``func`` may instead let the solver count for it by
offering two methods:

* ``suspend_counting()``, a context manager inside which its calls are not counted, and
* ``count_calls(n)``, which adds ``n`` evaluations.

:func:`counted_by_solver` is how the solver uses them. A ``func`` without them is called as it is: one that counts
itself cannot be captured in a ``while_loop`` and takes the compiled step or the chunks (with one warning), where
its own count runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def counted_by_solver(func: object, evaluations: Callable[[], int]) -> Iterator[None]:
    """The block's evaluations of ``func`` counted by the solver, for a ``func`` that counts its own calls and
    offers that (``func.suspend_counting()``, a context manager, and ``func.count_calls(n)``, as
    :class:`neuralode.models.ODEFunc` does): its counting is suspended inside the block, which a compiled
    ``while_loop`` needs (it cannot hold the side effect), and afterwards ``func.count_calls`` is given the
    evaluations made there, ``evaluations()`` after the block less before (the solve's ``stats.nfe``, or its
    batched calls per sample). Every evaluation inside the block must be counted there, eager ones included.
    Any other ``func``: nothing."""
    suspend, count = getattr(func, "suspend_counting", None), getattr(func, "count_calls", None)
    if not (callable(suspend) and callable(count)):
        yield
        return
    before = evaluations()
    try:
        with suspend():
            yield
    finally:
        count(evaluations() - before)
