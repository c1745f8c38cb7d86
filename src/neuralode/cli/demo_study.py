"""The demo: the Neural-ODE story in one run, printed to stdout with figures written to a folder.

1. *Solving an ODE.* The harmonic oscillator ``x'' = -x`` has the closed form ``(cos t, -sin t)``;
   Euler and rk4 at steps ``h, h/2, h/4, h/8`` and dopri5 at a few tolerances are measured
   against it, showing first- and fourth-order convergence and what adaptivity buys.
2. *Learning dynamics.* A small Neural ODE is fitted to the spiral of the paper's reference demo
   (torchdiffeq's ``examples/ode_demo.py``) by backpropagating through the solver.
3. *Figures.* Convergence, trajectories, phase portrait and the learned vector field as PNGs.

``run_demo(DemoConfig(...))`` does all three and returns the figures it printed, for tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..datasets.demo_spiral import SPIRAL_Y0, SpiralData, make_spiral_data, sample_subtrajectories
from ..progress import progress_bar
from ..solvers import SolverStats, get_tableau, solve

#: The files ``run_demo`` writes into ``DemoConfig.out``.
FIGURE_NAMES = ("convergence.png", "trajectories.png", "phase_portrait.png", "vector_field.png")


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo can be told. Defaults give the full run.

    Attributes:
        out: folder the figures are written to (created if missing).
        seed: seeds the model's initialisation and the minibatch sampling.
        iterations: training iterations (minibatches) for the spiral.
        batch_size: sub-trajectories per minibatch.
        batch_time: points per sub-trajectory.
        lr: Adam's learning rate.
        lr_final: if set, the learning rate follows a cosine from ``lr`` down to ``lr_final``
            over the iterations; constant ``lr`` otherwise.
        hidden: width of the model's hidden layer.
        method, rtol, atol, step_size: the solver the model is trained and evaluated with.
            ``rtol``/``atol`` only matter to adaptive methods. A fixed-step method without
            ``step_size`` steps from one data time to the next (rk4 that way costs 36
            evaluations per window of 10 points; the default dopri5 at these tolerances ~25,
            and fits as well).
        n_points, t_end: the spiral data: ``n_points`` equally spaced times in ``[0, t_end]``.
        oscillator_periods: length of the convergence study, in periods of ``2π``.
        coarsest_steps: Euler and rk4 steps over that span at the coarsest step size ``h``.
        refinements: how many step sizes: ``h, h/2, ..., h/2**(refinements-1)``.
        tolerances: rtol = atol values for dopri5.
        progress: show a progress bar on stderr while training.
        dpi: resolution of the figures.
    """

    out: Path = Path("demo_out")
    seed: int = 0
    iterations: int = 1000
    batch_size: int = 20
    batch_time: int = 10
    lr: float = 3e-3
    lr_final: float | None = 1e-4
    hidden: int = 50
    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-6
    step_size: float | None = None
    n_points: int = 1000
    t_end: float = 25.0
    oscillator_periods: int = 2
    coarsest_steps: int = 256
    refinements: int = 4
    tolerances: tuple[float, ...] = (1e-4, 1e-6, 1e-8)
    progress: bool = True
    dpi: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "tolerances", tuple(self.tolerances))
        for name in ("iterations", "batch_size", "hidden", "oscillator_periods", "coarsest_steps", "dpi"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DemoConfig.{name} must be a positive integer; got {value!r}.")
        if not isinstance(self.refinements, int) or self.refinements < 2:
            raise ValueError(f"DemoConfig.refinements must be an integer of at least 2; got {self.refinements!r}.")
        if not isinstance(self.n_points, int) or self.n_points < 2:
            raise ValueError(f"DemoConfig.n_points must be an integer of at least 2; got {self.n_points!r}.")
        if not isinstance(self.batch_time, int) or not 2 <= self.batch_time <= self.n_points:
            raise ValueError(
                f"DemoConfig.batch_time must be an integer between 2 and n_points={self.n_points}; got {self.batch_time!r}."
            )
        for name in ("lr", "t_end", "rtol", "atol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"DemoConfig.{name} must be a positive number; got {value!r}.")
        if self.lr_final is not None and not (math.isfinite(self.lr_final) and 0 < self.lr_final <= self.lr):
            raise ValueError(
                f"DemoConfig.lr_final must be a positive number no larger than lr={self.lr!r}; got {self.lr_final!r}."
            )
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"DemoConfig.step_size must be a positive number or None; got {self.step_size!r}.")
        get_tableau(self.method)  # raises ValueError naming the known methods
        if not self.tolerances or any(not (0 < tol < 1) for tol in self.tolerances):
            raise ValueError(f"DemoConfig.tolerances must be numbers in (0, 1); got {self.tolerances!r}.")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A few-second configuration for tests and smoke runs: few iterations, small figures.

        The convergence study is the full one (it is cheap); training is short, with a larger
        learning rate so that its loss still visibly drops.
        """
        settings: dict[str, Any] = dict(iterations=30, lr=1e-2, lr_final=None, progress=False, dpi=60)
        settings.update(overrides)
        return cls(**settings)


# --------------------------------------------------------------------------------------------
# 1. Solving an ODE: convergence against a closed form.


def harmonic_oscillator(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``d(x, v)/dt = (v, -x)``: the oscillator ``x'' = -x`` as a first-order system; ``y`` is ``(..., 2)``."""
    return torch.stack([y[..., 1], -y[..., 0]], dim=-1)


def harmonic_solution(t: torch.Tensor) -> torch.Tensor:
    """The oscillator's exact solution from ``(x, v)(0) = (1, 0)``: ``(cos t, -sin t)``, shape ``(len(t), 2)``."""
    return torch.stack([torch.cos(t), -torch.sin(t)], dim=-1)


@dataclass(frozen=True)
class ConvergenceRow:
    """One solve of the convergence study.

    Attributes:
        method: solver name.
        step: the fixed step size, or ``None`` for an adaptive method.
        tol: rtol = atol of an adaptive method, or ``None`` for a fixed-step one.
        nfe: evaluations of the right-hand side.
        error: max absolute error over the output times, against the closed form.
        ratio: this row's error divided into the previous row's (same method), or ``None``.
    """

    method: str
    step: float | None
    tol: float | None
    nfe: int
    error: float
    ratio: float | None


def convergence_study(config: DemoConfig) -> list[ConvergenceRow]:
    """Solve the harmonic oscillator with euler and rk4 at halving steps and dopri5 at ``config.tolerances``.

    The span is ``config.oscillator_periods`` periods and the steps are ``span / n`` for
    ``n = coarsest_steps * 2**k``, so every grid contains every output time and the errors
    measure the methods, not the interpolation between grid points.

    Returns:
        One :class:`ConvergenceRow` per solve: euler rows, then rk4 rows, then dopri5 rows.
    """
    span = 2 * math.pi * config.oscillator_periods
    t = torch.linspace(0.0, span, config.coarsest_steps + 1, dtype=torch.float64)  # (n_out,)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    exact = harmonic_solution(t)  # (n_out, 2)

    def run(method: str, **kwargs: Any) -> tuple[int, float]:
        sol = solve(harmonic_oscillator, y0, t, method=method, **kwargs)
        assert isinstance(sol.stats, SolverStats)  # one clock: counters are numbers
        return sol.stats.nfe, float((sol.ys - exact).abs().max())

    rows: list[ConvergenceRow] = []
    for method in ("euler", "rk4"):
        previous = None
        for k in range(config.refinements):
            step = span / (config.coarsest_steps * 2**k)
            nfe, err = run(method, options={"step_size": step})
            rows.append(ConvergenceRow(method, step, None, nfe, err, previous / err if previous else None))
            previous = err
    for tol in config.tolerances:
        nfe, err = run("dopri5", rtol=tol, atol=tol)
        rows.append(ConvergenceRow("dopri5", None, tol, nfe, err, None))
    return rows


def format_convergence_table(rows: list[ConvergenceRow]) -> str:
    """The rows as an aligned text table: method, step or tolerance, NFE, max error, error ratio."""
    header = ("method", "step / tol", "NFE", "max error", "ratio")
    body = [
        (
            r.method,
            f"h = {r.step:.5f}" if r.step is not None else f"tol = {r.tol:.0e}",
            str(r.nfe),
            f"{r.error:.2e}",
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    left = (True, True, False, False, False)  # text left-aligned, numbers right-aligned

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if lj else c.rjust(w) for c, w, lj in zip(line, widths, left)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def _convergence_summary(rows: list[ConvergenceRow]) -> list[str]:
    def of(method: str) -> list[ConvergenceRow]:
        return [r for r in rows if r.method == method]

    euler, rk4, dopri5 = of("euler"), of("rk4"), of("dopri5")
    ratios = lambda rs: ", ".join(f"{r.ratio:.2f}" for r in rs if r.ratio is not None)  # noqa: E731
    finest = euler[-1]
    # The adaptive solve to quote: the loosest tolerance that beats 1e-5, else the tightest.
    good = [r for r in dopri5 if r.error < 1e-5]
    best = good[0] if good else dopri5[-1]
    return [
        f"Euler is first order: its error halves as the step halves (ratios {ratios(euler)}), one evaluation per step.",
        f"rk4 is fourth order: halving the step divides its error by ~16 (ratios {ratios(rk4)}), "
        f"for four evaluations per step.",
        f"dopri5 at rtol = atol = {best.tol:.0e} reaches a max error of {best.error:.1e} with {best.nfe} "
        f"evaluations, {best.nfe / finest.nfe:.0%} of the finest Euler's {finest.nfe}, whose error is "
        f"still {finest.error:.1e}.",
    ]


# --------------------------------------------------------------------------------------------
# 2. Learning dynamics: a Neural ODE fitted to the spiral.


class SpiralODEFunc(nn.Module):
    """``f(t, y) = W2 tanh(W1 y**3 + b1) + b2``: the reference demo's model of the spiral's field.

    Cubing the input gives the network the true system's nonlinearity, as the reference does, so
    a small MLP only has to learn the linear map ``A``.
    """

    def __init__(self, hidden: int = 50) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        # The reference's initialisation: small weights, zero biases, so f starts near zero.
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.1)
                nn.init.zeros_(m.bias)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # y: (..., 2)
        return self.net(y**3)


@dataclass
class TrainingResult:
    """What training the spiral model produced.

    Attributes:
        model: the trained vector field.
        losses: the minibatch loss of every iteration.
        initial_loss, final_loss: mean absolute error over the whole trajectory before and after.
        nfe_total: forward evaluations of the model over all training iterations.
        y_pred: the learned trajectory at the data times, shape ``(n_points, 2)``.
        seconds: wall time of the training loop.
    """

    model: SpiralODEFunc
    losses: list[float] = field(default_factory=list)
    initial_loss: float = math.nan
    final_loss: float = math.nan
    nfe_total: int = 0
    y_pred: torch.Tensor | None = None
    seconds: float = 0.0


def _solver_kwargs(config: DemoConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"method": config.method, "rtol": config.rtol, "atol": config.atol}
    if config.step_size is not None:
        kwargs["options"] = {"step_size": config.step_size}
    return kwargs


def train_spiral(config: DemoConfig, data: SpiralData) -> TrainingResult:
    """Fit :class:`SpiralODEFunc` to ``data`` by backpropagation through the solver.

    Each iteration draws ``batch_size`` random windows of ``batch_time`` points, solves the model
    from each window's first state, and takes an Adam step on the mean absolute error.

    Returns:
        A :class:`TrainingResult`.
    """
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = SpiralODEFunc(config.hidden).to(data.y.dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = None
    if config.lr_final is not None:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.iterations, eta_min=config.lr_final)
    kwargs = _solver_kwargs(config)
    y0 = data.y[0]

    def full_trajectory() -> torch.Tensor:
        with torch.no_grad():
            return solve(model, y0, data.t, **kwargs).ys  # (n_points, 2)

    result = TrainingResult(model=model)
    result.initial_loss = float((full_trajectory() - data.y).abs().mean())
    start = time.perf_counter()
    with progress_bar(config.iterations, "training", enabled=config.progress, unit="it") as bar:
        for _ in range(config.iterations):
            batch_y0, batch_t, batch_y = sample_subtrajectories(data, config.batch_size, config.batch_time, gen)
            sol = solve(model, batch_y0, batch_t, **kwargs)  # ys: (batch_time, batch, 2)
            loss = (cast(torch.Tensor, sol.ys) - batch_y).abs().mean()  # tensor y0, tensor ys
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            result.losses.append(loss.item())
            assert isinstance(sol.stats, SolverStats)  # one clock: counters are numbers
            result.nfe_total += sol.stats.nfe
            bar.set_postfix(loss=f"{loss.item():.4f}", nfe=sol.stats.nfe, total_nfe=result.nfe_total, refresh=False)
            bar.update()
    result.seconds = time.perf_counter() - start
    result.y_pred = full_trajectory()
    result.final_loss = float((result.y_pred - data.y).abs().mean())
    return result


def vector_field_on_grid(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    limit: float,
    n: int = 25,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluate a planar field ``func(t=0, y)`` on an ``n`` x ``n`` grid over ``[-limit, limit]^2`` in ``dtype``.

    Returns:
        ``(x, y, u, v)``: grid coordinates ``(n,)`` and ``(n,)``, components ``(n, n)`` with row
        ``j`` at ``y[j]``.
    """
    x = torch.linspace(-limit, limit, n, dtype=dtype)
    y = torch.linspace(-limit, limit, n, dtype=dtype)
    yy, xx = torch.meshgrid(y, x, indexing="ij")  # (n, n) each
    points = torch.stack([xx, yy], dim=-1)  # (n, n, 2)
    with torch.no_grad():
        field_values = func(torch.tensor(0.0, dtype=dtype), points)  # (n, n, 2)
    return x, y, field_values[..., 0], field_values[..., 1]


# --------------------------------------------------------------------------------------------
# 3. Figures, and the whole run.


def write_figures(
    config: DemoConfig, rows: list[ConvergenceRow], data: SpiralData, trained: TrainingResult
) -> list[Path]:
    """Draw the four figures and save them in ``config.out``; returns their paths."""
    from .. import plotting

    series = {}
    for method in ("euler", "rk4", "dopri5"):
        chosen = [r for r in rows if r.method == method]
        series[method] = ([r.nfe for r in chosen], [r.error for r in chosen])
    limit = 1.1 * float(data.y.abs().max())
    x, y, u, v = vector_field_on_grid(trained.model, limit, dtype=data.y.dtype)
    figures = {
        "convergence.png": plotting.plot_convergence(
            series, title="Harmonic oscillator: max error against evaluations", dpi=config.dpi
        ),
        "trajectories.png": plotting.plot_trajectories(
            data.t, data.y, trained.y_pred, title="Spiral: true vs learned trajectories", dpi=config.dpi
        ),
        "phase_portrait.png": plotting.plot_phase_portrait(
            data.y, trained.y_pred, title="Spiral: phase portrait, true vs learned", dpi=config.dpi
        ),
        "vector_field.png": plotting.plot_vector_field(
            x, y, u, v, trajectory=data.y, title="Learned vector field, true trajectory on top", dpi=config.dpi
        ),
    }
    config.out.mkdir(parents=True, exist_ok=True)
    return [plotting.save_figure(fig, config.out / name) for name, fig in figures.items()]


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the demo: print the story to stdout, write the figures, return the printed figures.

    Returns:
        A dict with ``"convergence"`` (a list of :class:`ConvergenceRow` as dicts),
        ``"training"`` (``initial_loss``, ``final_loss``, ``losses``, ``nfe_total``,
        ``iterations``, ``seconds``) and ``"files"`` (the written paths, as strings).
    """
    periods = config.oscillator_periods
    print("== 1. Solving an ODE ==")
    print(
        f"Harmonic oscillator x'' = -x as d(x, v)/dt = (v, -x), (x, v)(0) = (1, 0), t in [0, {2 * periods}π];\n"
        f"closed form (cos t, -sin t). Euler and rk4 at steps h, h/2, h/4, ...; dopri5 at rtol = atol = tol."
    )
    rows = convergence_study(config)
    print()
    print(format_convergence_table(rows))
    print()
    for line in _convergence_summary(rows):
        print(line)

    print()
    print("== 2. Learning dynamics ==")
    data = make_spiral_data(config.n_points, config.t_end)
    print(
        f"True system: dy/dt = y**3 @ A, A = [[-0.1, 2.0], [-2.0, -0.1]], y0 = {list(SPIRAL_Y0)}, "
        f"{config.n_points} points in [0, {config.t_end:g}] (dopri5)."
    )
    if get_tableau(config.method).adaptive:
        solver = f"{config.method}, rtol = {config.rtol:g}, atol = {config.atol:g}"
    elif config.step_size is not None:
        solver = f"{config.method}, step {config.step_size:.4g}"
    else:
        solver = f"{config.method}, one step per data interval"

    lr = f"{config.lr:g}" if config.lr_final is None else f"{config.lr:g} -> {config.lr_final:g} (cosine)"
    print(
        f"Model: f(t, y) = Linear({config.hidden}->2)(tanh(Linear(2->{config.hidden})(y**3))). "
        f"Training: {config.iterations} iterations of {config.batch_size} windows of {config.batch_time} points, "
        f"Adam lr {lr}, loss mean |pred - true|, backpropagation through the solver ({solver})."
    )
    trained = train_spiral(config, data)
    print(
        f"Full-trajectory loss: {trained.initial_loss:.4f} before training, {trained.final_loss:.4f} after "
        f"({config.iterations} iterations, {trained.nfe_total} forward evaluations, {trained.seconds:.1f} s)."
    )

    print()
    print("== 3. Figures ==")
    files = write_figures(config, rows, data, trained)
    for path in files:
        print(f"wrote {path}")
    return {
        "convergence": [asdict(r) for r in rows],
        "training": {
            "initial_loss": trained.initial_loss,
            "final_loss": trained.final_loss,
            "losses": trained.losses,
            "nfe_total": trained.nfe_total,
            "iterations": config.iterations,
            "seconds": trained.seconds,
        },
        "files": [str(p) for p in files],
    }


__all__ = [
    "FIGURE_NAMES",
    "ConvergenceRow",
    "DemoConfig",
    "SpiralODEFunc",
    "TrainingResult",
    "convergence_study",
    "format_convergence_table",
    "harmonic_oscillator",
    "harmonic_solution",
    "run_demo",
    "train_spiral",
    "vector_field_on_grid",
    "write_figures",
]
