"""Progress bars: one place that decides how tqdm is set up for the library's long loops."""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm


def progress_bar(total: int, desc: str, *, enabled: bool = True, file: IO[str] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, sized to the terminal, for a loop of ``total`` iterations.

    Use it as a context manager and call ``bar.update()`` once per iteration and
    ``bar.set_postfix(...)`` for live figures (loss, NFE). Disabled bars cost nothing and print
    nothing, which is what tests and non-interactive runs want.

    Args:
        total: number of iterations.
        desc: short label shown before the bar.
        enabled: ``False`` turns the bar off.
        file: the stream; stderr by default, so stdout stays clean for results.
        **kwargs: passed on to ``tqdm``.

    Returns:
        The ``tqdm`` instance.
    """
    return tqdm(
        total=total,
        desc=desc,
        disable=not enabled,
        file=file if file is not None else sys.stderr,
        dynamic_ncols=True,
        mininterval=0.25,
        **kwargs,
    )
