"""Stiff problems: neuralode's rodas5p, kvaerno5, radau5, radau9, radau13, auto and rosenbrock23 against scipy's
Radau, BDF and LSODA and diffrax's Kvaerno5 (JAX on the CPU).

    python benchmarks/bench_stiff.py [--quick] [--out DIR]   (writes DIR/stiff.md, DIR/stiff_work_precision.png)

For each problem (Robertson to t = 1e5 and to 1e11 with log-spaced outputs, Van der Pol mu = 1000, HIRES,
OREGO, POLLU; Hairer & Wanner II, IV.10)
and tolerance (rtol 1e-4 ... 1e-8, atol = rtol * the problem's absolute scale): the error at the output
times against a reference (scipy Radau at rtol 1e-13), scaled as max |y - ref| / (|ref| + scale); accepted
steps; function and Jacobian evaluations; and the time as a ratio to scipy Radau's in the same process
(both float64 on one thread; scipy forms its Jacobians by finite differences, as it does by default, and
neuralode by autograd). Then the batch case: 256 Robertson systems with different rate constants in one
batched solve against one system alone and against 256 scipy solves. diffrax's rows (float64, one thread,
jit-compiled; the time excludes compilation) need jax and diffrax (the benchmarks' optional extra); without
them the rows are left out with a note.

The neuralode rows without a controller in their label use the methods' default step-size controller
(``"pi_gustafsson"`` for the stiff methods, ``"pi"`` for auto); rows "controller X" repeat a solve with
``options={"controller": X}`` (rodas5p at every tolerance, kvaerno5 at rtol >= 1e-6, rosenbrock23 and radau5 at
rtol >= 1e-5, to keep the run short), and the section "Step-size controllers" at the end sums them up. The
sections "radauN against scipy Radau" list, per problem and tolerance, their error and accepted steps as ratios
to Radau's (radau5 is the same method and adaptive machinery, Hairer & Wanner II, IV.8; radau9 and radau13 its
5- and 7-stage siblings of orders 9 and 13, with the continuous output's error controlled too); the rows
"radau9, dense_error off" show what that control costs and buys.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from scipy.integrate import solve_ivp

from benchmarks.common import machine_markdown, parse_args, setup
from neuralode import solve

F64 = torch.float64


# Each right-hand side is written once for numpy and torch: ``stack`` joins the components.
def robertson(y, stack):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2])


def vdp1000(y, stack):
    return stack([y[..., 1], 1000.0 * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]])


def hires(y, stack):
    y1, y2, y3, y4, y5, y6, y7, y8 = (y[..., i] for i in range(8))
    return stack(
        [
            -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
            1.71 * y1 - 8.75 * y2,
            -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4,
            -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
            280.0 * y6 * y8 - 1.81 * y7,
            -280.0 * y6 * y8 + 1.81 * y7,
        ]
    )


def orego(y, stack):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return stack(
        [
            77.27 * (y2 + y1 * (1 - 8.375e-6 * y1 - y2)),
            (y3 - (1 + y1) * y2) / 77.27,
            0.161 * (y1 - y3),
        ]
    )


# POLLU: the air pollution model of the Dutch National Institute of Public Health (Verwer 1994), 20 species and
# 25 reactions, as in Hairer & Wanner's test set and the CWI IVP test set (pollu.f).
_POLLU_K = (
    0.35,
    26.6,
    1.23e4,
    8.6e-4,
    8.2e-4,
    1.5e4,
    1.3e-4,
    2.4e4,
    1.65e4,
    9.0e3,
    2.2e-2,
    1.2e4,
    1.88,
    1.63e4,
    4.8e6,
    3.5e-4,
    1.75e-2,
    1.0e8,
    4.44e11,
    1.24e3,
    2.1,
    5.78,
    4.74e-2,
    1.78e3,
    3.12,
)


def pollu(y, stack):
    k = _POLLU_K
    y = [y[..., i] for i in range(20)]
    r = [
        k[0] * y[0],
        k[1] * y[1] * y[3],
        k[2] * y[4] * y[1],
        k[3] * y[6],
        k[4] * y[6],
        k[5] * y[6] * y[5],
        k[6] * y[8],
        k[7] * y[8] * y[5],
        k[8] * y[10] * y[1],
        k[9] * y[10] * y[0],
        k[10] * y[12],
        k[11] * y[9] * y[1],
        k[12] * y[13],
        k[13] * y[0] * y[5],
        k[14] * y[2],
        k[15] * y[3],
        k[16] * y[3],
        k[17] * y[15],
        k[18] * y[15],
        k[19] * y[16] * y[5],
        k[20] * y[18],
        k[21] * y[18],
        k[22] * y[0] * y[3],
        k[23] * y[18] * y[0],
        k[24] * y[19],
    ]
    r = [None] + r  # r[1] .. r[25], as numbered in the test set
    return stack(
        [
            -r[1] - r[10] - r[14] - r[23] - r[24] + r[2] + r[3] + r[9] + r[11] + r[12] + r[22] + r[25],
            -r[2] - r[3] - r[9] - r[12] + r[1] + r[21],
            -r[15] + r[1] + r[17] + r[19] + r[22],
            -r[2] - r[16] - r[17] - r[23] + r[15],
            -r[3] + 2 * r[4] + r[6] + r[7] + r[13] + r[20],
            -r[6] - r[8] - r[14] - r[20] + r[3] + 2 * r[18],
            -r[4] - r[5] - r[6] + r[13],
            r[4] + r[5] + r[6] + r[7],
            -r[7] - r[8],
            -r[12] + r[7] + r[9],
            -r[9] - r[10] + r[8] + r[11],
            r[9],
            -r[11] + r[10],
            -r[13] + r[12],
            r[14],
            -r[18] - r[19] + r[16],
            -r[20],
            r[20],
            -r[21] - r[22] - r[24] + r[23] + r[25],
            -r[25] + r[24],
        ]
    )


_POLLU_Y0 = [0.0, 0.2, 0.0, 0.04, 0.0, 0.0, 0.1, 0.3, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.007, 0.0, 0.0, 0.0]

PROBLEMS = {
    # name: (f, y0, t_end, absolute scale, output times)
    "Robertson": (robertson, [1.0, 0.0, 0.0], 1e5, 1e-6, np.concatenate([[0.0], np.geomspace(1e-4, 1e5, 10)])),
    # To t = 1e11 the species approach their steady state; y2 falls to ~1e-15, so a smaller absolute scale.
    "Robertson to 1e11": (
        robertson,
        [1.0, 0.0, 0.0],
        1e11,
        1e-10,
        np.concatenate([[0.0], np.geomspace(1e-5, 1e11, 17)]),
    ),
    "Van der Pol mu=1000": (vdp1000, [2.0, 0.0], 2000.0, 1e-3, np.linspace(0, 2000.0, 11)),
    "HIRES": (hires, [1, 0, 0, 0, 0, 0, 0, 0.0057], 321.8122, 1e-4, np.linspace(0, 321.8122, 11)),
    "OREGO": (orego, [1.0, 2.0, 3.0], 360.0, 1e-2, np.linspace(0, 360.0, 11)),
    "POLLU": (pollu, _POLLU_Y0, 60.0, 1e-6, np.linspace(0, 60.0, 11)),
}


_JAX: dict = {}


def _diffrax():
    """``(jax, jnp, diffrax)`` imported on first use in float64 on one thread, or ``None`` without them.

    The same one-thread XLA flags as ``bench_peers.py``; they must be set before jax is first imported.
    """
    if "mods" not in _JAX:
        from benchmarks.jax_env import one_thread

        one_thread()
        try:
            import diffrax
            import jax
            import jax.numpy as jnp
        except ImportError:
            _JAX["mods"] = None
        else:
            jax.config.update("jax_enable_x64", True)
            _JAX["mods"] = (jax, jnp, diffrax)
    return _JAX["mods"]


def run_diffrax(name, rtol):
    """diffrax's Kvaerno5 with its PID controller (as an I controller, its default), compiled once per
    problem (rtol and atol are traced arguments); the time is of a second, compiled call."""
    jax, jnp, diffrax = _diffrax()
    f, y0, t_end, scale, times = PROBLEMS[name]
    key = ("solve", name)
    if key not in _JAX:
        term = diffrax.ODETerm(lambda t, y, args: f(y, jnp.stack))
        ts = jnp.asarray(times)

        def solve_dfx(y0j, rtol_j, atol_j):
            sol = diffrax.diffeqsolve(
                term,
                diffrax.Kvaerno5(),
                0.0,
                float(t_end),
                None,
                y0j,
                saveat=diffrax.SaveAt(ts=ts),
                stepsize_controller=diffrax.PIDController(rtol=rtol_j, atol=atol_j),
                max_steps=200_000,
            )
            return sol.ys, sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]

        _JAX[key] = jax.jit(solve_dfx)
    fn = _JAX[key]
    args = (jnp.asarray(y0, dtype=jnp.float64), jnp.float64(rtol), jnp.float64(rtol * scale))
    jax.block_until_ready(fn(*args))  # compile (first tolerance) and warm up
    t0 = time.perf_counter()
    ys, steps, rejected = jax.block_until_ready(fn(*args))
    seconds = time.perf_counter() - t0
    return np.asarray(ys), int(steps), None, None, seconds, int(rejected)


def _np_rhs(f):
    return lambda t, y: f(y, np.array)


def _torch_rhs(f):
    return lambda t, y: f(y, lambda xs: torch.stack(xs, dim=-1))


def reference(name):
    f, y0, t_end, scale, times = PROBLEMS[name]
    r = solve_ivp(_np_rhs(f), (0.0, t_end), y0, method="Radau", t_eval=times, rtol=1e-13, atol=1e-13 * scale)
    if not r.success:
        raise RuntimeError(f"reference solve of {name} failed: {r.message}")
    return r.y.T


def run_scipy(name, method, rtol):
    f, y0, t_end, scale, times = PROBLEMS[name]
    t0 = time.perf_counter()
    r = solve_ivp(_np_rhs(f), (0.0, t_end), y0, method=method, rtol=rtol, atol=rtol * scale, dense_output=True)
    seconds = time.perf_counter() - t0
    return r.sol(times).T, len(r.t) - 1, r.nfev, r.njev, seconds, None  # scipy does not count rejected steps


def run_ours(name, method, rtol, land=False, controller=None, dense_error=None):
    """One neuralode solve; with ``land`` the steps end on the output times (``step_t``), so the outputs are
    step ends rather than values of the dense output: the difference is the dense output's share of the error.
    ``controller``: the step-size controller (``None``: the method's default); ``dense_error``: radau's
    continuous-output error control (``None``: the method's default)."""
    f, y0, t_end, scale, times = PROBLEMS[name]
    options = {"step_t": [float(x) for x in times[1:-1]]} if land else {}
    if controller is not None:
        options["controller"] = controller
    if dense_error is not None:
        options["dense_error"] = dense_error
    t0 = time.perf_counter()
    with torch.no_grad():
        sol = solve(
            _torch_rhs(f),
            torch.tensor(y0, dtype=F64),
            torch.tensor(times, dtype=F64),
            rtol=rtol,
            atol=rtol * scale,
            method=method,
            options=options,
        )
    seconds = time.perf_counter() - t0
    st = sol.stats
    return sol.ys.numpy(), st.n_accepted, st.nfe, st.n_jac_evals, seconds, st.n_rejected


# The controller rows: (method, smallest rtol at which they are run) and the controllers other than the default.
CONTROLLER_ROWS = (("rodas5p", 0.0), ("kvaerno5", 1e-6), ("rosenbrock23", 1e-5), ("radau5", 1e-5))
DEFAULT_CONTROLLER = "pi_gustafsson"
OTHER_CONTROLLERS = ("pi", "i", "gustafsson")


def controller_summary(records) -> list[str]:
    """Per method and controller, over the (problem, rtol) pairs that have controller rows: the sums of
    rejected and accepted steps and of nfe, the geometric mean of the error relative to the default
    controller's, and on how many pairs the issue's target holds (error <= scipy Radau's and accepted
    steps <= Radau's at the same rtol)."""
    by = {(p, r, lab): (e, st, rj, nfe) for p, r, lab, e, st, rj, nfe in records}
    lines = [
        "## Step-size controllers",
        "",
        "Sums over the problems and tolerances that have controller rows (rodas5p: rtol 1e-4 ... 1e-8; "
        "kvaerno5: 1e-4 ... 1e-6; rosenbrock23 and radau5: 1e-4, 1e-5). error / default: geometric mean over those "
        f"solves of the error divided by the error with the default controller ({DEFAULT_CONTROLLER}). "
        "Radau target: solves with an error no larger than scipy Radau's and no more accepted steps than "
        "Radau's at the same rtol.",
        "",
        "| method | controller | rejected | accepted | nfe | error / default | Radau target met |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, _min_rtol in CONTROLLER_ROWS:
        pairs = sorted({(p, r) for p, r, lab, *_ in records if lab.startswith(f"neuralode {method}, controller")})
        for c in (DEFAULT_CONTROLLER, *OTHER_CONTROLLERS):
            label = f"neuralode {method}" if c == DEFAULT_CONTROLLER else f"neuralode {method}, controller {c}"
            rows = [(by[(p, r, label)], by[(p, r, f"neuralode {method}")], by[(p, r, "scipy Radau")]) for p, r in pairs]
            if not rows:
                continue
            log_rel = [math.log(max(mine[0], 1e-300) / max(default[0], 1e-300)) for mine, default, _ in rows]
            met = sum(mine[0] <= radau[0] and mine[1] <= radau[1] for mine, _, radau in rows)
            lines.append(
                f"| {method} | {c}{' (default)' if c == DEFAULT_CONTROLLER else ''} | "
                f"{sum(m[2] for m, _, _ in rows)} | {sum(m[1] for m, _, _ in rows)} | "
                f"{sum(m[3] for m, _, _ in rows)} | {math.exp(sum(log_rel) / len(log_rel)):.2f} | "
                f"{met} of {len(rows)} |"
            )
    lines += [
        "",
        "Where the Radau target (error <= Radau's and accepted steps <= Radau's at the same rtol) holds, "
        "per method with its default controller, over every tolerance it ran at:",
        "",
    ]
    for method in ("rodas5p", "kvaerno5", "radau5", "radau9", "radau13", "rosenbrock23", "auto"):
        label = f"neuralode {method}"
        pairs = [(p, r) for p, r, lab, *_ in records if lab == label]
        radau = {(p, r): by[(p, r, "scipy Radau")] for p, r in pairs}
        err_ok = [pr for pr in pairs if by[(*pr, label)][0] <= radau[pr][0]]
        steps_ok = [pr for pr in pairs if by[(*pr, label)][1] <= radau[pr][1]]
        both = [f"{p} {r:g}" for p, r in pairs if (p, r) in err_ok and (p, r) in steps_ok]
        lines.append(
            f"* {method}: error <= Radau's on {len(err_ok)} of {len(pairs)}, steps <= Radau's on "
            f"{len(steps_ok)} of {len(pairs)}; both on {len(both)}" + (f" ({', '.join(both)})." if both else ".")
        )
    return lines + [""]


def radau_summary(records, method: str = "radau5") -> list[str]:
    """``method`` (default controller) against scipy Radau at the same rtol: error and accepted steps as ratios,
    per problem and tolerance, and on how many solves both are no worse than Radau's."""
    by = {(p, r, lab): (e, st) for p, r, lab, e, st, rj, nfe in records}
    pairs = [(p, r) for p, r, lab, *_ in records if lab == f"neuralode {method}"]
    lines = [
        f"## {method} against scipy Radau",
        "",
        f"error and accepted steps of neuralode {method} divided by scipy Radau's at the same rtol (below 1: "
        "better); met: both <= 1.",
        "",
        f"| problem | rtol | error {method} | error Radau | error ratio | steps {method} | steps Radau | steps ratio | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    met = 0
    log_e, log_s = [], []
    for p, r in pairs:
        (e, st), (e_r, st_r) = by[(p, r, f"neuralode {method}")], by[(p, r, "scipy Radau")]
        ok = e <= e_r and st <= st_r
        met += ok
        log_e.append(math.log(max(e, 1e-300) / max(e_r, 1e-300)))
        log_s.append(math.log(st / st_r))
        lines.append(
            f"| {p} | {r:g} | {e:.2g} | {e_r:.2g} | {e / e_r:.2f} | {st} | {st_r} | {st / st_r:.2f} | "
            f"{'yes' if ok else 'no'} |"
        )
    if pairs:
        lines += [
            "",
            f"Both met on {met} of {len(pairs)}; geometric means: error ratio "
            f"{math.exp(sum(log_e) / len(log_e)):.2f}, steps ratio {math.exp(sum(log_s) / len(log_s)):.2f}.",
        ]
    return lines + [""]


def error(ys, ref, scale) -> float:
    return float(np.max(np.abs(ys - ref) / (np.abs(ref) + scale)))


def batch_case(n_batch: int, n_scipy: int, methods=("rodas5p", "radau9")) -> list[str]:
    g = torch.Generator().manual_seed(0)
    k = torch.tensor([0.04, 3e7, 1e4], dtype=F64) * torch.exp(
        torch.empty(n_batch, 3, dtype=F64).uniform_(-0.5, 0.5, generator=g)
    )

    def f(t, y):  # (B, 3)
        y1, y2, y3 = y[:, 0], y[:, 1], y[:, 2]
        return torch.stack(
            [-k[:, 0] * y1 + k[:, 2] * y2 * y3, k[:, 0] * y1 - k[:, 2] * y2 * y3 - k[:, 1] * y2**2, k[:, 1] * y2**2],
            dim=-1,
        )

    times = torch.tensor(PROBLEMS["Robertson"][4], dtype=F64)
    rtol, atol = 1e-6, 1e-12
    y0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    k_all = k
    results = {}
    for method in methods:
        with torch.no_grad():
            k = k_all
            solve(f, y0.repeat(n_batch, 1), times, rtol=rtol, atol=atol, method=method)  # warm-up
            t0 = time.perf_counter()
            batched = solve(f, y0.repeat(n_batch, 1), times, rtol=rtol, atol=atol, method=method)
            t_batch = time.perf_counter() - t0
            k = k_all[:1]
            t0 = time.perf_counter()
            single = solve(f, y0, times, rtol=rtol, atol=atol, method=method)
            t_single = time.perf_counter() - t0
            k = k_all
        results[method] = (batched, t_batch, single, t_single)
    worst = {m: 0.0 for m in methods}
    t0 = time.perf_counter()
    for b in range(n_scipy):
        kb = k[b].tolist()

        def fn(t, y, kb=kb):
            return [
                -kb[0] * y[0] + kb[2] * y[1] * y[2],
                kb[0] * y[0] - kb[2] * y[1] * y[2] - kb[1] * y[1] ** 2,
                kb[1] * y[1] ** 2,
            ]

        r = solve_ivp(
            fn, (0.0, times[-1].item()), [1.0, 0.0, 0.0], method="Radau", rtol=rtol, atol=atol, t_eval=times.numpy()
        )
        for m in methods:
            worst[m] = max(worst[m], error(results[m][0].ys[:, b].numpy(), r.y.T, 1e-6))
    t_scipy = (time.perf_counter() - t0) * n_batch / n_scipy
    lines = [
        f"Batch: {n_batch} Robertson systems (rate constants scaled by e^U(-0.5, 0.5)), rtol {rtol:g}, "
        f"atol {atol:g}, outputs at 10 log-spaced times to 1e5.",
        "",
        "| solve | time (s) | ratio | steps |",
        "|---|---|---|---|",
    ]
    for m in methods:
        batched, t_batch, single, t_single = results[m]
        lines += [
            f"| neuralode {m}, one batched solve of {n_batch} | {t_batch:.3f} | {t_batch / t_single:.2f}× one "
            f"system; {t_scipy / t_batch:.1f}× faster than scipy | {batched.stats.n_accepted} |",
            f"| neuralode {m}, one system | {t_single:.3f} | 1 | {single.stats.n_accepted} |",
        ]
    lines += [
        f"| scipy Radau, {n_batch} solves"
        + (f" (extrapolated from {n_scipy})" if n_scipy < n_batch else "")
        + f" | {t_scipy:.3f} | | |",
        "",
        f"Largest difference between each batched solve and scipy Radau over the {n_scipy} systems compared "
        "(scaled as above): " + ", ".join(f"{m} {worst[m]:.2g}" for m in methods) + ".",
    ]
    return lines


def work_precision_figure(curves: dict, path: Path) -> None:
    """Error against time (top row) and against accepted steps (bottom row), log-log, a column per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    names = list(curves)
    shown = [
        lab for lab in curves[names[0]] if not ("land" in lab or "controller" in lab or "dense_error" in lab)
    ]  # diagnostic rows: tables only
    # One colour and marker per solver across the panels (more solvers than the default cycle has colours).
    palette = plt.get_cmap("tab20").colors
    style = {lab: (palette[(2 * i) % 20 + (2 * i) // 20], "osd^v<>ph*"[i % 10]) for i, lab in enumerate(shown)}
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 6.4), squeeze=False)
    for j, name in enumerate(names):
        for label, pts in curves[name].items():
            if label not in style:
                continue
            err = [max(p[0], 1e-16) for p in pts]
            colour, marker = style[label]
            for row, x in ((0, [p[1] for p in pts]), (1, [p[2] for p in pts])):
                axes[row][j].loglog(x, err, "-", marker=marker, ms=3, color=colour, label=label)
        axes[0][j].set_title(name, fontsize=9)
        axes[0][j].set_xlabel("time (s)")
        axes[1][j].set_xlabel("accepted steps")
        for row in (0, 1):
            axes[row][j].set_ylabel("scaled error")
            axes[row][j].grid(True, which="major", alpha=0.3)
            axes[row][j].xaxis.set_minor_formatter(NullFormatter())  # crowded minor labels on short decades
    axes[0][0].legend(fontsize=6)
    fig.suptitle(
        "Stiff work-precision: max scaled error at the outputs against time (top) and accepted steps "
        "(bottom), rtol 1e-4 ... 1e-8",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    setup()
    tols = [1e-4, 1e-6] if args.quick else [1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    lines = [
        "# Stiff problems: neuralode rodas5p, kvaerno5, radau5, radau9, radau13, auto, rosenbrock23 against scipy "
        "Radau, BDF, LSODA",
        "",
        "Written by `benchmarks/bench_stiff.py`" + (" --quick" if args.quick else "") + ". "
        "error: max over outputs and components of |y - ref| / (|ref| + scale), ref = scipy Radau at rtol 1e-13; "
        "atol = rtol x scale. steps: accepted steps. nfe includes the evaluations that form Jacobians "
        "(one per autograd Jacobian for neuralode; n for scipy's finite differences). "
        'time: seconds, and the ratio to scipy Radau measured in the same process. Rows "steps land on '
        'outputs" end steps on the output times (options step_t), so the outputs are step ends: their difference '
        "from the plain rows is the share of the error that comes from the dense output (rodas5p: Steinebach's "
        "order-4 interpolant; kvaerno5: cubic Hermite; radau5: the cubic collocation polynomial, as scipy Radau's; radau9: the "
        'quintic collocation polynomial (radau13: degree 7), whose error radau9 and radau13 control by default: rows "dense_error off" leave that '
        "out). rejected: rejected steps (scipy does not count them). "
        "neuralode rows without a controller in the label use the method's default step-size controller "
        '(pi_gustafsson for rodas5p, kvaerno5, radau5, radau9, radau13 and rosenbrock23; pi for auto); rows "controller X" repeat the '
        'solve with options={"controller": X} (see the section "Step-size controllers" at the end).',
        "",
        machine_markdown(),
        "",
    ]
    for method in (
        "rodas5p",
        "rosenbrock23",
        "kvaerno5",
        "radau5",
        "radau9",
        "radau13",
        "auto",
    ):  # warm-up: first calls pay for imports and allocations
        run_ours("OREGO", method, 1e-3)
    has_jax = _diffrax() is not None
    if not has_jax:
        lines += [
            "diffrax's Kvaerno5 rows are left out: jax or diffrax is not installed here (`pip install -e .[bench]`).",
            "",
        ]
    curves: dict = {}
    records: list = []  # (problem, rtol, label, error, accepted, rejected, nfe) of every row
    for name in PROBLEMS:
        ref = reference(name)
        scale = PROBLEMS[name][3]
        lines += [
            f"## {name}",
            "",
            "| rtol | method | error | steps | rejected | nfe | Jacobians | time (s) | time / Radau |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for rtol in tols:
            rows = []
            radau = run_scipy(name, "Radau", rtol)
            runs = [
                ("neuralode rodas5p", run_ours(name, "rodas5p", rtol)),
                ("neuralode rodas5p, steps land on outputs", run_ours(name, "rodas5p", rtol, land=True)),
                ("neuralode kvaerno5", run_ours(name, "kvaerno5", rtol)),
                ("neuralode kvaerno5, steps land on outputs", run_ours(name, "kvaerno5", rtol, land=True)),
                ("neuralode radau5", run_ours(name, "radau5", rtol)),
                ("neuralode radau5, steps land on outputs", run_ours(name, "radau5", rtol, land=True)),
                ("neuralode radau9", run_ours(name, "radau9", rtol)),
                ("neuralode radau9, dense_error off", run_ours(name, "radau9", rtol, dense_error=False)),
                (
                    "neuralode radau9, dense_error off, steps land on outputs",
                    run_ours(name, "radau9", rtol, land=True, dense_error=False),
                ),
                ("neuralode radau13", run_ours(name, "radau13", rtol)),
                ("neuralode auto", run_ours(name, "auto", rtol)),
            ]
            if rtol >= 1e-5:
                runs.append(("neuralode rosenbrock23", run_ours(name, "rosenbrock23", rtol)))
            for method, min_rtol in CONTROLLER_ROWS:
                if rtol >= min_rtol:
                    runs += [
                        (f"neuralode {method}, controller {c}", run_ours(name, method, rtol, controller=c))
                        for c in OTHER_CONTROLLERS
                    ]
            if has_jax:
                runs.append(("diffrax Kvaerno5", run_diffrax(name, rtol)))
            runs += [
                ("scipy Radau", radau),
                ("scipy BDF", run_scipy(name, "BDF", rtol)),
                ("scipy LSODA", run_scipy(name, "LSODA", rtol)),
            ]
            for label, (ys, steps, nfe, njev, seconds, rejected) in runs:
                err = error(ys, ref, scale)
                curves.setdefault(name, {}).setdefault(label, []).append((err, seconds, steps))
                records.append((name, rtol, label, err, steps, rejected, nfe))
                rows.append(
                    f"| {rtol:g} | {label} | {err:.2g} | {steps} | {'—' if rejected is None else rejected} | "
                    f"{'—' if nfe is None else nfe} | {'—' if njev is None else njev} | {seconds:.3f} | "
                    f"{seconds / radau[4]:.2f} |"
                )
            lines += rows
            print("\n".join(rows), flush=True)
        lines.append("")
    lines += controller_summary(records)
    lines += radau_summary(records, "radau5")
    lines += radau_summary(records, "radau9")
    lines += radau_summary(records, "radau13")
    lines += batch_case(256, 32 if args.quick else 256)
    args.out.mkdir(parents=True, exist_ok=True)
    work_precision_figure(curves, args.out / "stiff_work_precision.png")
    lines += [
        "",
        "Work-precision figure: `stiff_work_precision.png` (error against time and against accepted "
        "steps, one column per problem).",
    ]
    (args.out / "stiff.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'stiff.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
