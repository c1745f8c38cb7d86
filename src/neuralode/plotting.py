"""Pure functions from arrays to matplotlib figures, and an atomic ``save_figure``.

Every ``plot_*`` function takes arrays (NumPy arrays, lists or CPU tensors) and returns a new
``matplotlib.figure.Figure``; none of them solves, trains or writes anything.

matplotlib is imported lazily, so ``import neuralode`` does not import it. Figures are built with
``matplotlib.figure.Figure`` directly rather than through ``pyplot``: that needs no display and
no backend (saving uses the Agg canvas), leaves a user's interactive backend alone, and keeps the
figures out of pyplot's global registry, so nothing leaks when many are made. matplotlib's own
docs recommend this for non-interactive use ("Embedding in a web application server").
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from ._atomic import atomic_write

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    import torch
    from matplotlib.figure import Figure

    # A 1-D series of numbers as the plot functions take it: whatever _as_array converts.
    Series: TypeAlias = Sequence[float] | np.ndarray | torch.Tensor

# Colours of the "true" and "learned" curves, shared by every figure so they read alike.
TRUE_COLOR = "#1f77b4"
LEARNED_COLOR = "#d62728"


def _new_figure(figsize: tuple[float, float], dpi: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi, layout="constrained")


def _as_array(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=float)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got shape {a.shape}.")
    return a


def loglog_slope(x: Series, y: Series) -> float:
    """Least-squares slope of ``log y`` against ``log x``: the empirical order of a power law.

    Args:
        x, y: positive values of equal length (at least 2).

    Returns:
        The slope ``p`` of the best fit ``y ≈ C x**p``.

    Raises:
        ValueError: if the lengths differ, fewer than 2 points are given, or a value is not positive.
    """
    xa, ya = _as_array(x, "x", 1), _as_array(y, "y", 1)
    if xa.shape != ya.shape or xa.size < 2:
        raise ValueError(f"x and y must have the same length of at least 2; got {xa.size} and {ya.size}.")
    if (xa <= 0).any() or (ya <= 0).any():
        raise ValueError("x and y must be positive to fit a log-log slope.")
    return float(np.polyfit(np.log(xa), np.log(ya), 1)[0])


def plot_convergence(
    series: Mapping[str, tuple[Series, Series]],
    *,
    title: str = "Error against cost",
    dpi: float = 100,
) -> Figure:
    """Log-log plot of error against function evaluations, one line per method, slopes annotated.

    Args:
        series: ``{method: (nfe, error)}``, two equally long sequences of positive numbers per
            method (e.g. one point per step size or tolerance).
        title: the axes title.
        dpi: figure resolution.

    Returns:
        The figure. Each method's fitted log-log slope (error ∝ NFE^slope) is written in the
        legend and next to its line.
    """
    fig = _new_figure((6.4, 4.8), dpi)
    ax = fig.add_subplot()
    markers = "osD^vP*X"
    for i, (name, (nfe, err)) in enumerate(series.items()):
        x, y = _as_array(nfe, f"series[{name!r}] nfe", 1), _as_array(err, f"series[{name!r}] error", 1)
        label = name
        if x.size >= 2:
            slope = loglog_slope(x, y)
            label = f"{name} (slope {slope:.2f})"
        (line,) = ax.loglog(x, y, marker=markers[i % len(markers)], label=label)
        if x.size >= 2:
            # Annotate at the geometric midpoint of the line's first segment, nudged off the line.
            xm, ym = math.sqrt(x[0] * x[1]), math.sqrt(y[0] * y[1])
            ax.annotate(
                f"slope {slope:.1f}",
                (xm, ym),
                xytext=(6, 6),
                textcoords="offset points",
                color=line.get_color(),
                fontsize=9,
            )
    ax.set_xlabel("function evaluations (NFE)")
    ax.set_ylabel("max error vs closed form")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def plot_trajectories(
    t: Series,
    y_true: Any,
    y_pred: Any,
    *,
    names: Sequence[str] = ("x", "y"),
    title: str = "Trajectories: true vs learned",
    dpi: float = 100,
) -> Figure:
    """Each state component against time, true (solid) and learned (dashed), one panel each.

    Args:
        t: times, shape ``(n,)``.
        y_true, y_pred: states, shape ``(n, d)``.
        names: one name per component (``d`` of them).
        title: the figure title.
        dpi: figure resolution.

    Returns:
        The figure, ``d`` panels sharing the time axis.

    Raises:
        ValueError: if the shapes do not match.
    """
    ta = _as_array(t, "t", 1)
    yt, yp = _as_array(y_true, "y_true", 2), _as_array(y_pred, "y_pred", 2)
    if yt.shape != yp.shape or yt.shape[0] != ta.shape[0]:
        raise ValueError(f"y_true {yt.shape} and y_pred {yp.shape} must both have shape (len(t)={ta.shape[0]}, d).")
    if len(names) != yt.shape[1]:
        raise ValueError(f"names must name each of the {yt.shape[1]} components; got {len(names)}.")
    fig = _new_figure((7.5, 2.2 * yt.shape[1] + 0.6), dpi)
    axes = fig.subplots(yt.shape[1], 1, sharex=True, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        ax.plot(ta, yt[:, i], color=TRUE_COLOR, label="true")
        ax.plot(ta, yp[:, i], color=LEARNED_COLOR, linestyle="--", label="learned")
        ax.set_ylabel(names[i])
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper right")
    axes[-1].set_xlabel("t")
    fig.suptitle(title)
    return fig


def plot_phase_portrait(
    y_true: Any,
    y_pred: Any,
    *,
    names: tuple[str, str] = ("x", "y"),
    title: str = "Phase portrait: true vs learned",
    dpi: float = 100,
) -> Figure:
    """True and learned trajectories in the plane, with the shared starting point marked.

    Args:
        y_true, y_pred: states, shape ``(n, 2)``.
        names: axis labels.
        title: the axes title.
        dpi: figure resolution.

    Returns:
        The figure, with equal axis scales.
    """
    yt, yp = _as_array(y_true, "y_true", 2), _as_array(y_pred, "y_pred", 2)
    if yt.shape[1] != 2 or yp.shape[1] != 2:
        raise ValueError(f"y_true and y_pred must have shape (n, 2); got {yt.shape} and {yp.shape}.")
    fig = _new_figure((5.6, 5.2), dpi)
    ax = fig.add_subplot()
    ax.plot(yt[:, 0], yt[:, 1], color=TRUE_COLOR, label="true")
    ax.plot(yp[:, 0], yp[:, 1], color=LEARNED_COLOR, linestyle="--", label="learned")
    ax.plot(yt[0, 0], yt[0, 1], "ko", markersize=5, label="start")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return fig


def plot_vector_field(
    x: Any,
    y: Any,
    u: Any,
    v: Any,
    *,
    trajectory: Any | None = None,
    names: tuple[str, str] = ("x", "y"),
    title: str = "Learned vector field",
    dpi: float = 100,
) -> Figure:
    """Streamlines of a planar vector field coloured by speed, optionally with a trajectory on top.

    Args:
        x, y: 1-D, equally spaced grid coordinates, shapes ``(nx,)`` and ``(ny,)``.
        u, v: the field's components on the grid, shape ``(ny, nx)`` (row ``j`` is ``y[j]``).
        trajectory: optional states to overlay, shape ``(n, 2)`` (e.g. the true trajectory).
        names: axis labels.
        title: the axes title.
        dpi: figure resolution.

    Returns:
        The figure, with a colour bar of log10 speed.
    """
    xa, ya = _as_array(x, "x", 1), _as_array(y, "y", 1)
    ua, va = _as_array(u, "u", 2), _as_array(v, "v", 2)
    if ua.shape != (ya.size, xa.size) or va.shape != ua.shape:
        raise ValueError(
            f"u and v must have shape (len(y), len(x)) = {(ya.size, xa.size)}; got {ua.shape} and {va.shape}."
        )
    fig = _new_figure((6.2, 5.2), dpi)
    ax = fig.add_subplot()
    # Log speed: a cubic field's speed spans orders of magnitude across the grid.
    speed = np.log10(np.hypot(ua, va) + 1e-12)
    stream = ax.streamplot(xa, ya, ua, va, color=speed, cmap="viridis", density=1.3, linewidth=0.9, arrowsize=1.0)
    fig.colorbar(stream.lines, ax=ax, label="log10 speed |f|")
    if trajectory is not None:
        tr = _as_array(trajectory, "trajectory", 2)
        ax.plot(tr[:, 0], tr[:, 1], color="black", linewidth=1.4, label="true trajectory")
        ax.legend(loc="upper right")
    ax.set_xlim(xa[0], xa[-1])
    ax.set_ylim(ya[0], ya[-1])
    ax.set_aspect("equal")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(title)
    return fig


def plot_learning_curves(
    epochs: Series,
    train_loss: Series,
    test_error: Series,
    nfe_forward: Series | None = None,
    nfe_backward: Series | None = None,
    *,
    title: str = "Learning curves",
    dpi: float = 100,
) -> Figure:
    """Training loss, test error and (for ODE models) function evaluations against epochs.

    Args:
        epochs: epoch numbers, shape ``(n,)``.
        train_loss: mean training loss per epoch, shape ``(n,)``.
        test_error: test error per epoch as a fraction in [0, 1], shape ``(n,)``; plotted in percent.
        nfe_forward, nfe_backward: mean function evaluations per training batch in the forward
            pass and in the adjoint backward pass, shape ``(n,)``. The third panel is drawn when
            either is given and not all zero (a ResNet or MLP has none).
        title: the figure title.
        dpi: figure resolution.

    Returns:
        The figure: two or three panels side by side sharing the epoch axis.

    Raises:
        ValueError: if the arrays differ in length or are empty.
    """
    ep = _as_array(epochs, "epochs", 1)
    loss = _as_array(train_loss, "train_loss", 1)
    err = _as_array(test_error, "test_error", 1)
    nfes = {
        label: _as_array(values, name, 1)
        for label, name, values in (("forward", "nfe_forward", nfe_forward), ("backward", "nfe_backward", nfe_backward))
        if values is not None
    }
    lengths = {ep.size, loss.size, err.size, *(a.size for a in nfes.values())}
    if len(lengths) != 1 or ep.size == 0:
        raise ValueError(
            f"epochs, train_loss, test_error and the NFE arrays must have one equal, non-zero length; got lengths {sorted(lengths)}."
        )
    nfes = {label: a for label, a in nfes.items() if np.any(a > 0)}
    panels = 3 if nfes else 2
    fig = _new_figure((4.2 * panels, 3.6), dpi)
    axes = fig.subplots(1, panels, sharex=True, squeeze=False)[0]
    marker = "o" if ep.size <= 30 else None
    axes[0].plot(ep, loss, marker=marker, color=TRUE_COLOR)
    axes[0].set_ylabel("training loss (cross-entropy)")
    if np.all(loss > 0) and loss.max() / loss.min() > 20:
        axes[0].set_yscale("log")
    axes[1].plot(ep, 100 * err, marker=marker, color=LEARNED_COLOR)
    axes[1].set_ylabel("test error (%)")
    if panels == 3:
        for label, values in nfes.items():
            axes[2].plot(ep, values, marker=marker, label=f"NFE-{label[0].upper()} ({label})")
        axes[2].set_ylabel("function evaluations per batch")
        axes[2].legend()
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    return fig


def plot_curves(
    panels: Sequence[tuple[str, Sequence[tuple[str, Any, Any]]]],
    *,
    xlabel: str,
    title: str,
    dpi: float = 100,
) -> Figure:
    """Panels of curves side by side sharing the x axis: any run's learning curves.

    Args:
        panels: ``(ylabel, curves)`` per panel; each curve is ``(label, x, y)`` with 1-D ``x`` and
            ``y`` of one length. A panel whose curves are all empty is left out.
        xlabel: the shared x axis' label, with its unit (``"iteration"``, ``"epoch"``).
        title: the figure title (say which run, how far it got, and its score).

    Raises:
        ValueError: no panel has data, or a curve's ``x`` and ``y`` differ in length.
    """
    kept = []
    for ylabel, curves in panels:
        arrays = []
        for label, x, y in curves:
            xs, ys = _as_array(x, "x", 1), _as_array(y, "y", 1)
            if xs.size != ys.size:
                raise ValueError(f"curve {label!r} of panel {ylabel!r}: x has {xs.size} values, y {ys.size}.")
            if xs.size:
                arrays.append((label, xs, ys))
        if arrays:
            kept.append((ylabel, arrays))
    if not kept:
        raise ValueError("plot_curves needs at least one curve with data.")
    fig = _new_figure((4.2 * len(kept), 3.6), dpi)
    axes = fig.subplots(1, len(kept), sharex=True, squeeze=False)[0]
    for ax, (ylabel, arrays) in zip(axes, kept):
        for label, xs, ys in arrays:
            ax.plot(xs, ys, marker="o" if xs.size <= 30 else None, markersize=3, label=label)
        ys = np.concatenate([a[2] for a in arrays])
        if np.all(ys > 0) and ys.max() / ys.min() > 20:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if len(arrays) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: float | None = None) -> Path:
    """Write ``fig`` to ``path`` atomically and close it.

    The image is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so a reader never sees a half-written file and an interrupted save leaves any
    previous file intact. The format follows the suffix (``.png``, ``.pdf``, ``.svg``, ...).

    Args:
        fig: the figure.
        path: destination; its directory must exist.
        dpi: resolution; the figure's own by default.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: if ``path`` has no suffix to take the format from.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"path must end in a format suffix such as .png; got {str(path)!r}.")
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi if dpi is not None else "figure"))
    finally:
        _close(fig)
    return path


def _close(fig: Figure) -> None:
    # Figures made here are not registered with pyplot; one the caller made with pyplot is.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)


# --------------------------------------------------------------------------------------------
# Continuous normalizing flows on 2-D data.


def plot_point_clouds(
    panels: Sequence[tuple[str, Any]],
    *,
    limits: tuple[float, float] = (-4.0, 4.0),
    bins: int = 60,
    suptitle: str | None = None,
    panel_size: float = 3.0,
    dpi: float = 100,
) -> Figure:
    """A row of 2-D histograms, one per ``(title, points)`` panel, on shared square axes.

    Used for target against model samples, and for the strip of samples flowing from the base
    distribution to the data.

    Args:
        panels: ``(title, points)`` pairs; ``points`` of shape ``(n, 2)``.
        limits: axis range, the same for x and y.
        bins: histogram bins per axis.
        suptitle: a title over the row.

    Raises:
        ValueError: no panels, or points not of shape ``(n, 2)``.
    """
    if not panels:
        raise ValueError("panels must hold at least one (title, points) pair.")
    fig = _new_figure((panel_size * len(panels) + 1.0, panel_size + (0.4 if suptitle else 0.0)), dpi)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, points) in zip(axes, panels):
        p = _as_array(points, "points", 2)
        if p.shape[1] != 2:
            raise ValueError(f"points must have shape (n, 2); got {p.shape} in panel {title!r}.")
        *_, image = ax.hist2d(p[:, 0], p[:, 1], bins=bins, range=[limits, limits], cmap="viridis")
        ax.set_title(title)
        ax.set_xlim(limits)
        ax.set_ylim(limits)
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    bin_width = (limits[1] - limits[0]) / bins
    fig.colorbar(image, ax=list(axes), shrink=0.8, label=f"samples per bin ({bin_width:.2g} x {bin_width:.2g})")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_density_grid(
    density: Any,
    *,
    limits: tuple[float, float] = (-4.0, 4.0),
    title: str = "learned density",
    size: float = 3.5,
    dpi: float = 100,
) -> Figure:
    """A density evaluated on a square grid, as an image.

    Args:
        density: ``(ny, nx)`` values at the grid points; row ``i`` is the ``i``-th y value from
            ``limits[0]`` up (``torch.meshgrid(..., indexing="xy")`` order).
        limits: the grid's range, the same for x and y.
        title: the axes title.

    Raises:
        ValueError: ``density`` is not 2-D.
    """
    d = _as_array(density, "density", 2)
    fig = _new_figure((size + 1.0, size), dpi)
    ax = fig.subplots()
    image = ax.imshow(d, origin="lower", extent=(*limits, *limits), cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.85, label="density p(x)")
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    return fig


# --------------------------------------------------------------------------------------------
# Latent ODEs on the paper's spirals (section 5).


def plot_latent_spirals(
    panels: Sequence[Mapping[str, Any]],
    *,
    title: str = "Latent ODE: reconstruction and extrapolation",
    dpi: float = 100,
) -> Figure:
    """One panel per sample: the true spiral, the observed points, and the latent ODE's
    reconstruction (over the observed window) and extrapolation forwards and backwards in time.

    Args:
        panels: one mapping per sample with ``(n, 2)`` arrays under the keys ``"true"`` (the
            noiseless spiral), ``"observed"`` (noisy observations), ``"reconstruction"``,
            ``"forward"`` (after the window), ``"backward"`` (before it) and ``"rnn_forward"``
            (the RNN baseline's extrapolation after the window); any key may be missing. An optional ``"label"`` string titles the panel.
        title: the figure title.
        dpi: figure resolution.

    Returns:
        The figure.
    """
    if not panels:
        raise ValueError("panels must hold at least one sample.")
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _new_figure((4.0 * cols, 3.8 * rows), dpi)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    styles = (
        ("true", dict(color="0.6", linewidth=1.0, label="true spiral")),
        ("reconstruction", dict(color=LEARNED_COLOR, linewidth=1.8, label="reconstruction")),
        ("forward", dict(color="#ff7f0e", linewidth=1.8, linestyle="--", label="extrapolation (t > window)")),
        ("backward", dict(color="#17becf", linewidth=1.8, linestyle="--", label="extrapolation (t < window)")),
        ("rnn_forward", dict(color="#9467bd", linewidth=1.4, linestyle=":", label="RNN extrapolation (t > window)")),
    )
    for ax, panel in zip(axes, panels):
        for key, style in styles:
            if key in panel:
                xy = _as_array(panel[key], key, 2)
                ax.plot(xy[:, 0], xy[:, 1], **style)
        if "observed" in panel:
            xy = _as_array(panel["observed"], "observed", 2)
            ax.scatter(xy[:, 0], xy[:, 1], s=8, color=TRUE_COLOR, zorder=3, label="observed")
        ax.set_title(str(panel.get("label", "")), fontsize="medium")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.grid(True, alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    # One legend for all panels, below them, where it hides no data.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize="small")
    fig.suptitle(title)
    return fig


def plot_latent_trajectories(
    latents: Any,
    clockwise: Any,
    *,
    title: str = "Latent trajectories by direction of rotation",
    dpi: float = 100,
) -> Figure:
    """Latent trajectories projected on their first two principal components, coloured by the
    direction of rotation of their spiral.

    Args:
        latents: ``(N, T, L)`` latent states of ``N`` samples at ``T`` times (``L >= 2``).
        clockwise: ``(N,)`` booleans.
        title: the figure title.
        dpi: figure resolution.

    Returns:
        The figure; each trajectory's start is marked with a dot (explained in the legend).
    """
    z = _as_array(latents, "latents", 3)
    cw = np.asarray(clockwise if not hasattr(clockwise, "detach") else clockwise.detach().cpu().numpy()).astype(bool)
    if cw.shape != (z.shape[0],) or z.shape[2] < 2:
        raise ValueError(f"latents must be (N, T, L >= 2) and clockwise (N,); got {z.shape} and {cw.shape}.")
    flat = z.reshape(-1, z.shape[2])
    centre = flat.mean(axis=0)
    # PCA: the two directions of largest variance over all samples and times.
    _, _, vt = np.linalg.svd(flat - centre, full_matrices=False)
    p = (z - centre) @ vt[:2].T  # (N, T, 2)
    fig = _new_figure((5.5, 5.0), dpi)
    ax = fig.subplots()
    for label, sel, color in (("clockwise", cw, LEARNED_COLOR), ("counter-clockwise", ~cw, TRUE_COLOR)):
        for i, k in enumerate(np.flatnonzero(sel)):
            ax.plot(p[k, :, 0], p[k, :, 1], color=color, alpha=0.5, linewidth=0.8, label=label if i == 0 else None)
            ax.scatter(p[k, :1, 0], p[k, :1, 1], color=color, s=6)
    ax.scatter([], [], color="0.4", s=6, label="dot: z at the window's start (t = 0)")
    ax.set_xlabel("latent PC 1")
    ax.set_ylabel("latent PC 2")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------
# Flow matching: image grids, particle paths, sample quality against solver cost.


def plot_image_grid(
    panels: Sequence[tuple[str, Any]],
    *,
    columns: int = 8,
    suptitle: str | None = None,
    cell: float = 0.45,
    dpi: float = 100,
) -> Figure:
    """Panels of grey images side by side, each a grid of ``columns`` images per row.

    Args:
        panels: ``(title, images)`` pairs; ``images`` of shape ``(n, 1, H, W)`` or ``(n, H, W)``
            with values in ``[0, 1]`` (0 black).
        columns: images per row of a panel.
        suptitle: a title over the panels.

    Raises:
        ValueError: no panels, or images not of shape ``(n, [1,] H, W)``.
    """
    if not panels:
        raise ValueError("panels must hold at least one (title, images) pair.")
    grids = []
    for title, images in panels:
        a = _as_array(images, "images")
        if a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 3:
            raise ValueError(f"images must have shape (n, 1, H, W) or (n, H, W); got {a.shape} in panel {title!r}.")
        n, h, w = a.shape
        cols = min(columns, n)
        rows = -(-n // cols)
        grid = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1))  # one-pixel white gutters
        for k in range(n):
            r, c = divmod(k, cols)
            grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = a[k]
        grids.append((title, grid))
    scale = cell / 8 * min(1.0, 14.0 / (sum(g.shape[1] for _, g in grids) * cell / 8))  # at most 14 inches of images
    width = sum(g.shape[1] for _, g in grids) * scale + 0.6 * len(grids)
    height = max(g.shape[0] for _, g in grids) * scale + (0.9 if suptitle else 0.5)
    fig = _new_figure((max(width, 3.0), max(height, 2.0)), dpi)
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, (title, grid) in zip(axes, grids):
        ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(title, fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize="medium")
    return fig


def plot_particle_paths(
    paths: Any,
    *,
    background: Any | None = None,
    limits: tuple[float, float] = (-4.0, 4.0),
    title: str = "particle paths",
    size: float = 4.5,
    dpi: float = 100,
) -> Figure:
    """Trajectories of a few 2-D particles, start (○) to end (●), over a histogram of ``background``.

    Args:
        paths: ``(T, n, 2)`` positions at ``T`` times.
        background: ``(m, 2)`` points drawn as a faint 2-D histogram (e.g. the final samples).
        limits: axis range, the same for x and y.

    Raises:
        ValueError: ``paths`` not of shape ``(T, n, 2)``.
    """
    p = _as_array(paths, "paths", 3)
    if p.shape[2] != 2:
        raise ValueError(f"paths must have shape (T, n, 2); got {p.shape}.")
    fig = _new_figure((size + 0.4, size + 0.4), dpi)
    ax = fig.subplots()
    if background is not None:
        b = _as_array(background, "background", 2)
        ax.hist2d(b[:, 0], b[:, 1], bins=80, range=[limits, limits], cmap="Greys")
    for k in range(p.shape[1]):
        (line,) = ax.plot(p[:, k, 0], p[:, k, 1], linewidth=1.2)
        ax.plot(p[0, k, 0], p[0, k, 1], "o", markerfacecolor="none", color=line.get_color())
        ax.plot(p[-1, k, 0], p[-1, k, 1], "o", color=line.get_color())
    ax.set_xlim(limits)
    ax.set_ylim(limits)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(title, fontsize="medium")
    return fig


def plot_quality_vs_nfe(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    ylabel: str,
    reference: float | None = None,
    reference_label: str = "reference",
    dpi: float = 100,
) -> Figure:
    """A quality measure against the number of function evaluations, one curve per solver, log-log.

    Args:
        curves: ``{label: [(nfe, value), ...]}``.
        title: the axes title (say what data and model).
        ylabel: the measure, with its unit.
        reference: a horizontal line (e.g. the measure's floor at this sample size).

    Raises:
        ValueError: no curve has points.
    """
    if not any(curves.values()):
        raise ValueError("curves must hold at least one (nfe, value) point.")
    fig = _new_figure((5.6, 4.0), dpi)
    ax = fig.subplots()
    for label, points in curves.items():
        if points:
            pts = sorted(points)
            ax.plot([q[0] for q in pts], [q[1] for q in pts], marker="o", markersize=4, label=label)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label=reference_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("function evaluations (NFE)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig
