"""The runnable examples run end to end on a short budget, as a user would start them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuralode.solvers.control.controller import CONTROLLERS

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def test_bouncing_ball_fits_and_writes_its_figure(tmp_path):
    out = tmp_path / "bb"
    proc = run_example("bouncing_ball.py", "--iterations", "40", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "bouncing_ball.png").stat().st_size > 10_000
    first, last = metrics["history"][0], metrics["history"][-1]
    # 40 Adam steps from e = 0.75, h0 = 1.3 m already cut the bounce-time error several fold.
    assert last["loss_s2"] < 0.2 * first["loss_s2"]
    assert abs(last["e"] - 0.85) < abs(first["e"] - 0.85)
    assert "fitted e =" in proc.stdout


def test_per_sample_vdp_takes_fewer_steps_per_sample_at_the_same_accuracy(tmp_path):
    out = tmp_path / "ps"
    run_example("per_sample_vdp.py", "--batch", "16", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "per_sample_steps.png").stat().st_size > 10_000
    assert metrics["per_sample_steps_mean"] < 0.6 * metrics["joint_steps"]
    assert metrics["per_sample_steps_max"] <= metrics["joint_steps"]
    assert metrics["rows_evaluated_per_sample"] < metrics["rows_evaluated_joint"]
    # Per-sample control keeps each sample as close to the truth as the joint solve does.
    assert metrics["max_relative_error_per_sample"] < 3 * max(metrics["max_relative_error_joint"], 1e-5)
    # Every controller on the per-sample clocks: each takes its own steps (the option reaches the per-sample
    # controller), "pi" is the default, and each keeps every sample near the reference.
    runs = metrics["controllers"]
    assert set(runs) == set(CONTROLLERS)
    assert (out / "per_sample_controllers.png").stat().st_size > 10_000
    assert len({tuple(r["rejected"]) for r in runs.values()}) == len(CONTROLLERS)
    assert sum(runs["pi"]["accepted"]) / 16 == metrics["per_sample_steps_mean"]
    for r in runs.values():
        assert len(r["error"]) == 16 and max(r["error"]) < 5 * max(metrics["max_relative_error_joint"], 1e-5)


def test_per_sample_bounces_fits_every_ball_and_matches_solo_gradients(tmp_path):
    out = tmp_path / "psb"
    run_example("per_sample_bounces.py", "--balls", "8", "--iterations", "25", "--check-balls", "3", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "per_sample_bounces.png").stat().st_size > 10_000
    first, last = metrics["history"][0], metrics["history"][-1]
    # 25 Adam steps from one shared guess cut every ball's bounce-time error several fold.
    assert last["loss_s2"] < 0.2 * first["loss_s2"]
    assert metrics["solo_check"]["max_rel_gradient_difference"] < 1e-8
    # The floor leaves reach after the observed bounces: at most 5 events per ball.
    assert all(h["events"] <= 8 * 5 for h in metrics["history"])


def test_flow_matching_2d_trains_both_couplings_and_scores_their_samples(tmp_path):
    out = tmp_path / "fm"
    proc = run_example(
        "flow_matching_2d.py",
        "--iterations",
        "60",
        "--batch",
        "64",
        "--samples",
        "200",
        "--tol",
        "1e-3",
        "--out",
        str(out),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "flow_matching_2d.png").stat().st_size > 10_000
    for coupling in ("independent", "ot"):
        rows = metrics[coupling]["sampling"]
        assert [r["nfe"] for r in rows[:4]] == [1, 2, 5, 20] and rows[4]["method"] == "dopri5"
        assert math.isfinite(metrics[coupling]["test_nll"])
        # 60 steps already move the noise towards the data: 5 Euler steps beat the noise itself.
        assert rows[2]["w2"] < metrics["noise_w2"]
        assert all(r["w2"] > 0.5 * metrics["data_w2_floor"] for r in rows)
    assert "ot: trained in" in proc.stdout


MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


@pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason=f"real MNIST not found in {MNIST_DIR}"
)
def test_mnist_odenet_trains_through_the_adjoint_and_scores_the_test_images(tmp_path):
    out = tmp_path / "mnist"
    proc = run_example("mnist_odenet.py", "--data-dir", str(MNIST_DIR), "--quick", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "mnist_odenet.png").stat().st_size > 10_000
    assert (metrics["train_images"], metrics["test_images"], metrics["iterations"]) == (512, 256, 4)
    # Every step ran a forward dopri5 solve and an adjoint backward solve of the block.
    assert all(h["nfe_forward"] >= 8 and h["nfe_backward"] >= 8 for h in metrics["history"])
    assert all(math.isfinite(h["loss"]) for h in metrics["history"])
    assert 0.0 <= metrics["test_error"] <= 1.0
    assert f"test error {100 * metrics['test_error']:.2f}% on 256 images" in proc.stdout


def test_latent_ode_spirals_extrapolates_better_after_training(tmp_path):
    out = tmp_path / "latent"
    run_example("latent_ode_spirals.py", "--quick", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "latent_ode_spirals.png").stat().st_size > 10_000
    first, last = metrics["history"][0], metrics["history"][-1]
    # 20 Adam steps raise the ELBO and bring the untrained extrapolation error down.
    assert last["elbo"] > first["elbo"]
    assert metrics["extrapolation_rmse_after"] < 0.8 * metrics["extrapolation_rmse_before"]


def test_cnf_2d_lowers_the_test_nll(tmp_path):
    out = tmp_path / "cnf"
    run_example("cnf_2d.py", "--quick", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "cnf_2d.png").stat().st_size > 10_000
    # 15 Adam steps from the untrained flow lower the held-out negative log-likelihood by over a nat.
    assert metrics["test_nll_after"] < metrics["test_nll_before"] - 1.0
    assert all(h["nfe_forward"] > 0 and h["nfe_backward"] > 0 for h in metrics["history"])


def test_torchdiffeq_program_runs_through_the_alias(tmp_path):
    out = tmp_path / "tdp"
    proc = run_example("torchdiffeq_program.py", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    import neuralode

    assert metrics["methods_listed"] == len(neuralode.METHODS)
    # The event function is zero after T = 2 s: the search stops at T, after the three bounces before it.
    assert metrics["bounces"] == 3 and abs(metrics["stopped_at"] - 2.0) < 1e-9
    assert metrics["time_error"] < 1e-8 and metrics["first_bounce_gradient_error"] < 1e-8
    assert metrics["hvp_relative_error"] < 1e-6 and metrics["jvp_relative_error"] < 1e-6
    assert "UserWarning" not in proc.stderr


def test_checkpoints_budget_stores_at_most_k_states_and_trains(tmp_path):
    out = tmp_path / "cp"
    proc = run_example("checkpoints_budget.py", "--steps", "100", "--iterations", "10", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_stored_states"] <= metrics["checkpoints"] == 8
    assert metrics["n_recomputed_steps"] > metrics["steps"]  # the budget is paid for in recomputation
    # The backward pass re-ran the planned steps, each rk4 step evaluating at least its 3 stages after the first
    # (the first is carried where the step before evaluated f at its end for an output), and held its K
    # checkpoints and the parameter-gradient sums, with a few states' worth of adjoints carried between steps.
    assert metrics["backward_recomputed_steps"] == metrics["n_recomputed_steps"]
    assert (
        3 * metrics["backward_recomputed_steps"] <= metrics["backward_nfe"] <= 4 * metrics["backward_recomputed_steps"]
    )
    s, p, k = metrics["state_bytes"], metrics["parameter_bytes"], metrics["checkpoints"]
    assert k * s + p <= metrics["backward_held_bytes"] <= (k + 4) * s + 2 * p
    assert "steps re-run" in proc.stdout
    assert metrics["gradient_relative_difference"] < 1e-10  # backpropagation's gradient
    assert metrics["loss_after"] < 0.7 * metrics["loss_before"]
    assert "steps recomputed in the backward pass" in proc.stdout
    # adjoint="auto": backprop within a budget four times its estimate, recursive checkpointing in a quarter of it,
    # each with backpropagation's gradient.
    assert set(metrics["auto_modes"]) == {"backprop", "checkpoints"}
    assert all(err < 1e-10 for err in metrics["auto_modes"].values())


def test_compiled_solve_takes_the_eager_steps_joint_and_per_sample(tmp_path):
    # The eager backend traces the compiled run (while_loop and all) without generating code: the same steps
    # and answers as the eager solves, quickly; inductor's speed is benchmarks/results/device_run.md's.
    out = tmp_path / "compiled"
    # With step_t stops and a min_step floor, which the compiled runs keep as the clocks do.
    args = ["--batch", "8", "--repeats", "1", "--backend", "eager", "--out", str(out), "--step-t", "2.5", "5.0"]
    run_example("compiled_solve.py", *args, "--min-step", "1e-4")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step_t"] == [2.5, 5.0] and metrics["min_step"] == 1e-4
    ways = metrics["ways"]
    assert (out / "compiled_solve_times.png").stat().st_size > 10_000
    assert (ways["compiled"]["accepted"], ways["compiled"]["rejected"]) == (
        ways["eager"]["accepted"],
        ways["eager"]["rejected"],
    )
    # Per sample the run groups a stage sum as the compiled step does (y + sum_l k_l (a_jl dt)), the eager
    # per-sample clock as y + dt sum_l a_jl k_l: in float32 an error ratio within rounding of 1 may fall either
    # side, so a sample may take a step more or less (float64: equal, tests/test_device_run.py).
    eager, compiled = ways["eager, per sample"], ways["compiled, per sample"]
    assert abs(compiled["accepted"] - eager["accepted"]) <= 0.01 * eager["accepted"]
    assert abs(compiled["rejected"] - eager["rejected"]) <= 0.05 * eager["rejected"] + 2
    # The fixed grid's compiled run takes the eager grid's steps (and one evaluation more, which is not reported).
    assert ways["compiled, rk4 grid"]["accepted"] == ways["eager, rk4 grid"]["accepted"] == 1000
    for way in ("compiled", "compiled, per sample", "compiled, rk4 grid"):
        assert ways[way]["max_abs_diff_from_eager"] < 1e-3  # float32 over 10 time units
        assert ways[way]["compile_s"] > 0


def test_compiled_stiff_takes_the_eager_steps_one_system_and_a_batch(tmp_path):
    # The eager backend traces rodas5p's compiled run (jacrev, LAPACK's factorisation and solves inside the
    # while_loop) without generating code: the eager solves' steps and answers; inductor's speed is
    # benchmarks/results/stiff_compiled.md's.
    out = tmp_path / "stiff"
    proc = run_example("compiled_stiff.py", "--batch", "4", "--repeats", "1", "--backend", "eager", "--out", str(out))
    ways = json.loads((out / "metrics.json").read_text())["ways"]
    assert (out / "compiled_stiff.png").stat().st_size > 10_000
    for way in ("compiled", "compiled, batch"):
        assert ways[way]["same_steps"] and ways[way]["accepted"] > 100
        assert ways[way]["max_rel_diff_from_eager"] < 1e-6
    assert ways["scipy Radau"]["accepted"] > 100
    assert "x scipy Radau's time" in proc.stdout


def test_compiled_training_gives_the_eager_gradients_and_losses(tmp_path):
    # The eager backend traces the compiled runs (the grid run and its reverse run; the device run and its reverse
    # run; the adjoint's forward and backward device runs) without generating code: the gradients and the whole training must be the eager ones'
    # to float32 rounding; inductor's speed is benchmarks/results/device_run.md's.
    out = tmp_path / "ct"
    proc = run_example(
        "compiled_training.py", "--steps", "40", "--iterations", "5", "--backend", "eager", "--out", str(out)
    )
    metrics = json.loads((out / "metrics.json").read_text())
    ways = metrics["ways"]
    assert (out / "compiled_training.png").stat().st_size > 10_000
    for way in ("backprop, rk4 grid", "backprop, dopri5", "adjoint, dopri5"):
        eager, compiled = ways[way], ways[way + ", compiled"]
        assert compiled["gradient_relative_difference"] < 1e-5
        assert compiled["first_step_s"] > 0 and compiled["compiles"] >= 2  # forward and backward runs compiled
        for a, b in zip(eager["losses"], compiled["losses"]):
            assert abs(a - b) <= 1e-4 * a
        assert eager["losses"][-1] < 0.5 * eager["losses"][0]  # it trains
        for entry in (eager, compiled):  # the ODEFunc's own count, compiled or not, is the solver's
            assert entry["field_nfe"] == entry["solver_nfe"] > 0
    assert "x the eager speed per training step" in proc.stdout
