"""Learning curves of any run folder (MNIST, CNF, flow or spirals) from its ``metrics.jsonl``.

``neuralode plot RUN_DIR`` and the MNIST task's end of training call :func:`plot_run`. Each
training line of the metrics is one point (one logging interval), so a one-epoch MNIST run still
draws curves; the title names the task, how far the run got and its latest score.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .rundir import METRICS_NAME, read_jsonl, saved_run_task

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVES_NAME = "learning_curves.png"


def run_kind(run_dir: Path) -> str | None:
    """``"mnist"``, ``"cnf"``, ``"latent"``, ...: the checkpoint kind of the run, from ``config.json``,
    else from the checkpoint (see :func:`~neuralode.training.rundir.saved_run_task`)."""
    return saved_run_task(run_dir)[0]


def _series(records: list[dict[str, Any]], x: str, y: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    points = [(r[x], r[y] * scale) for r in records if r.get(y) is not None and x in r]
    return [p[0] for p in points], [p[1] for p in points]


def _nfe(lines: list[dict[str, Any]], x: str) -> list[tuple[str, list[float], list[float]]]:
    """Forward and backward NFE curves, leaving out one that is all zero (no adjoint, no ODE)."""
    curves = [
        (f"NFE-{tag} ({name})", *_series(lines, x, f"nfe_{name}"))
        for tag, name in (("F", "forward"), ("B", "backward"))
    ]
    return [c for c in curves if any(c[2])]


def _mnist_panels(records: list[dict[str, Any]]) -> tuple[list, str, str]:
    lines = [r for r in records if "epoch" not in r]
    epochs = [r for r in records if "epoch" in r]
    for r in epochs:  # an epoch line's x on the fractional-epoch axis of the training lines
        r.setdefault("epochs", r["epoch"])
    loss = [
        ("training, per interval", *_series(lines, "epochs", "train_loss")),
        ("training, per epoch", *_series(epochs, "epochs", "train_loss")),
    ]
    error = [
        ("test", *_series(epochs, "epochs", "test_error", 100)),
        ("training, per interval", *_series(lines, "epochs", "train_error", 100)),
    ]
    panels = [
        ("cross-entropy loss", loss),
        ("error (%)", error),
        ("function evaluations per batch", _nfe(lines or epochs, "epochs")),
    ]
    last = records[-1]
    model = last.get("model") or (epochs[-1]["model"] if epochs else "")
    score = f", test error {100 * epochs[-1]['test_error']:.2f}% after epoch {epochs[-1]['epoch']}" if epochs else ""
    return panels, "epoch", f"MNIST {model}: iteration {last.get('iteration', '?')}{score}"


def _cnf_panels(records: list[dict[str, Any]], dataset: str) -> tuple[list, str, str]:
    lines = [r for r in records if not r.get("final")]
    final = next((r for r in reversed(records) if r.get("final")), None)
    panels = [
        (
            "nats per sample",
            [
                ("training loss", *_series(lines, "iteration", "loss")),
                ("training NLL", *_series(lines, "iteration", "nll")),
            ],
        ),
        ("penalty", [(name, *_series(lines, "iteration", name)) for name in ("kinetic", "jacobian")]),
        ("function evaluations per iteration", _nfe(lines, "iteration")),
    ]
    score = f", test NLL {final['test_nll']:.3f} nats" if final else ""
    return panels, "iteration", f"CNF on {dataset}: iteration {records[-1].get('iteration', '?')}{score}"


def _flow_panels(records: list[dict[str, Any]], config: dict[str, Any]) -> tuple[list, str, str]:
    lines = [r for r in records if not r.get("final")]
    final = next((r for r in reversed(records) if r.get("final")), None)
    panels = [
        ("flow-matching loss (mean squared velocity error)", [("training", *_series(lines, "iteration", "loss"))]),
        ("learning rate", [("Adam", *_series(lines, "iteration", "lr"))]),
    ]
    mle = [r for r in lines if r.get("phase") == "mle"]
    if mle:  # the maximum-likelihood fine-tune that follows flow matching
        panels.insert(1, ("fine-tune NLL (nats per sample)", [("training batches", *_series(mle, "iteration", "nll"))]))
    score = f", test NLL {final['test_nll']:.3f} nats" if final else ""
    what = f"{config.get('dataset', '?')}, {config.get('coupling', '?')} coupling"
    return panels, "iteration", f"Flow matching on {what}: iteration {records[-1].get('iteration', '?')}{score}"


def _latent_panels(records: list[dict[str, Any]], observations: Any) -> tuple[list, str, str]:
    lines = [r for r in records if "elbo" in r]
    scored = [r for r in records if r.get("eval") or r.get("final")]
    panels = [
        ("ELBO per sequence", [("latent ODE", *_series(lines, "iteration", "elbo"))]),
        ("RNN loss (MSE of one-step-ahead predictions)", [("RNN", *_series(lines, "iteration", "rnn_loss"))]),
        (
            "test extrapolation RMSE",
            [
                ("latent ODE", *_series(scored, "iteration", "extrapolation_rmse")),
                ("RNN", *_series(scored, "iteration", "rnn_extrapolation_rmse")),
            ],
        ),
        ("function evaluations per iteration", _nfe(lines, "iteration")),
    ]
    score = (
        f", extrapolation RMSE {scored[-1]['extrapolation_rmse']:.3f} (RNN {scored[-1]['rnn_extrapolation_rmse']:.3f})"
        if scored
        else ""
    )
    return (
        panels,
        "iteration",
        f"Latent ODE, {observations} observations: iteration {records[-1].get('iteration', '?')}{score}",
    )


def draw_run(run_dir: str | os.PathLike[str], *, dpi: float = 100) -> Figure:
    """The run's learning curves as a matplotlib figure (see :func:`plot_run`).

    Raises:
        FileNotFoundError: no ``metrics.jsonl`` in ``run_dir``.
        ValueError: the metrics hold nothing to plot yet, or are damaged (naming the file and line).
    """
    from ..plotting import plot_curves
    from .rundir import read_run_config

    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_NAME
    if not metrics.is_file():
        raise FileNotFoundError(
            f"No {METRICS_NAME} in {run_dir}: is it a training run folder (neuralode train ... --out DIR)?"
        )
    records = read_jsonl(metrics)
    if not records:
        raise ValueError(f"{metrics} has no lines to plot yet: the run has not logged its first interval.")
    kind = run_kind(run_dir)
    try:
        config = read_run_config(run_dir)
    except (OSError, ValueError):  # the title's dataset or observations become "?"
        config = {}
    if kind == "cnf":
        panels, xlabel, title = _cnf_panels(records, config.get("dataset", "?"))
    elif kind == "flow":
        panels, xlabel, title = _flow_panels(records, config)
    elif kind == "latent":
        panels, xlabel, title = _latent_panels(records, config.get("observations", "?"))
    else:
        panels, xlabel, title = _mnist_panels(records)
    return plot_curves(panels, xlabel=xlabel, title=title, dpi=dpi)


def plot_run(run_dir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None, *, dpi: float = 100) -> Path:
    """Draw the run's learning curves into ``path`` (default ``RUN_DIR/learning_curves.png``).

    Raises:
        FileNotFoundError: no ``metrics.jsonl`` in ``run_dir``.
        ValueError: the metrics hold nothing to plot yet, or are damaged.
        OSError: the figure cannot be written (the error names ``path``).
    """
    from ..plotting import save_figure

    figure = draw_run(run_dir, dpi=dpi)
    return save_figure(figure, Path(path) if path is not None else Path(run_dir) / CURVES_NAME)
