"""Latent ODEs on the paper's spirals: data, per-sample times, the ELBO, and the training program."""

from __future__ import annotations

import json
import math

import pytest
import torch

from neuralode.datasets.spirals import make_spirals, spiral_curves
from neuralode.models import LatentODE, RNNBaseline
from neuralode.training.latent import (
    CHECKPOINT_NAME,
    LATENT_FIGURE,
    METRICS_NAME,
    SPIRALS_FIGURE,
    LatentConfigError,
    LatentTrainConfig,
    read_latent_metrics,
    train_latent,
)

# --------------------------------------------------------------------------------------------
# Data.


@pytest.mark.parametrize("n_obs", [30, 50, 100])
def test_spiral_shapes_and_subsets(n_obs):
    d = make_spirals(40, n_obs, seed=3)
    assert d.values.shape == (40, 100, 2) and d.true_values.shape == (40, 100, 2)
    assert d.mask.shape == (40, 100) and d.mask.dtype == torch.bool
    assert (d.mask.sum(1) == n_obs).all()
    assert d.times.shape == (100,) and float(d.times[0]) == 0.0
    assert (d.times.diff() > 0).all()
    assert d.future_times.shape == (100,) and float(d.future_times[0]) > float(d.times[-1])
    assert d.true_future.shape == (40, 100, 2)
    assert len(d) == 40 and d.n_observations == n_obs


def test_spirals_seeded():
    a, b, c = make_spirals(20, 30, seed=1), make_spirals(20, 30, seed=1), make_spirals(20, 30, seed=2)
    assert torch.equal(a.values, b.values) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.values, c.values)


def test_spirals_directions_and_truth():
    d = make_spirals(400, 100, noise_std=0.3, seed=0)
    frac = d.clockwise.float().mean().item()
    assert 0.4 < frac < 0.6  # a fair coin over 400 samples
    # The noise has the asked standard deviation and the truth comes from the right spiral.
    assert abs((d.values - d.true_values).std().item() - 0.3) < 0.01
    _, curves = spiral_curves()
    for i in range(5):
        i0, cw = int(d.start_index[i]), int(d.clockwise[i])
        assert torch.allclose(d.true_values[i], torch.as_tensor(curves[cw, i0 : i0 + 100]).float())
        assert torch.allclose(d.true_future[i], torch.as_tensor(curves[cw, i0 + 100 : i0 + 200]).float())
    # Direction of rotation: the sign of the angular velocity about each spiral's centre.
    for i in range(20):
        xy = d.true_values[i].double() - torch.tensor([-5.0 if d.clockwise[i] else 5.0, 0.0], dtype=torch.float64)
        ang = torch.atan2(xy[:, 1], xy[:, 0])
        dang = torch.remainder(ang.diff() + math.pi, 2 * math.pi) - math.pi
        assert (dang.mean() < 0) == bool(d.clockwise[i])


def test_spirals_bad_arguments():
    with pytest.raises(ValueError, match="n_observations"):
        make_spirals(4, 0)
    with pytest.raises(ValueError, match="too short"):
        make_spirals(4, 30, n_total=250)


# --------------------------------------------------------------------------------------------
# The model.


def _ragged_batch(seed: int = 0):
    """Three samples with different numbers of observations, at different times, padded to 7."""
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 4, 5]
    times = torch.zeros(3, 7, dtype=torch.float64)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for b, n in enumerate(lengths):
        t = torch.sort(torch.rand(n, generator=g, dtype=torch.float64) * 3.0 + 0.5 * b).values
        times[b, :n] = t
        mask[b, :n] = True
    values = torch.randn(3, 7, 2, generator=g, dtype=torch.float64)
    values[~mask] = float("nan")  # unobserved slots must not matter
    return values, times, mask, lengths


def test_per_sample_times_match_solving_alone():
    torch.manual_seed(0)
    model = LatentODE(rtol=1e-10, atol=1e-10).double()
    values, times, mask, lengths = _ragged_batch()
    query = torch.tensor([[-1.0, 0.3, 2.0, 4.5], [0.0, 1.0, 1.5, 6.0], [-0.2, 0.1, 3.3, 3.4]], dtype=torch.float64)
    terms = model.elbo(values, times, mask, sample=False)
    pred = model.predict(values, times, mask, query)
    assert torch.isfinite(terms.elbo).all() and torch.isfinite(pred).all()
    for b, n in enumerate(lengths):
        alone = model.elbo(values[b : b + 1, :n], times[b : b + 1, :n], None, sample=False)
        assert torch.allclose(terms.qz0_mean[b], alone.qz0_mean[0], rtol=0, atol=1e-12)
        assert torch.allclose(terms.predictions[b, :n], alone.predictions[0], rtol=0, atol=1e-8)
        for name in ("elbo", "log_likelihood", "kl"):
            assert torch.allclose(getattr(terms, name)[b], getattr(alone, name)[0], rtol=1e-9, atol=1e-8), name
        p_alone = model.predict(values[b : b + 1, :n], times[b : b + 1, :n], None, query[b])
        assert torch.allclose(pred[b], p_alone[0], rtol=0, atol=1e-8)


def test_predict_shared_times_and_order_free_queries():
    torch.manual_seed(1)
    model = LatentODE(rtol=1e-9, atol=1e-9).double()
    values = torch.randn(4, 10, 2, dtype=torch.float64)
    times = torch.linspace(0, 2, 10, dtype=torch.float64)
    q = torch.tensor([1.5, -0.5, 0.0, 3.0, 0.7], dtype=torch.float64)
    out, z = model.predict(values, times, None, q, return_latent=True)
    assert out.shape == (4, 5, 2) and z.shape == (4, 5, 4)
    mean, _, _ = model.encode(values, times)
    assert torch.allclose(z[:, 2], mean)  # τ = 0 is z0 itself
    # Queries in any order give the same values as sorted ones.
    perm = torch.argsort(q)
    assert torch.allclose(model.predict(values, times, None, q[perm]), out[:, perm], atol=1e-9)


def test_input_errors():
    model = LatentODE()
    v = torch.randn(2, 3, 2)
    with pytest.raises(ValueError, match="strictly increasing"):
        model.elbo(v, torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="mask row 1"):
        model.elbo(v, torch.tensor([0.0, 1.0, 2.0]), torch.tensor([[True, False, True], [False, False, False]]))
    with pytest.raises(ValueError, match="times must have shape"):
        model.elbo(v, torch.tensor([0.0, 1.0]))


def test_elbo_finite_and_decreasing_loss():
    torch.manual_seed(0)
    d = make_spirals(16, 30, seed=0)
    model = LatentODE(rtol=1e-2, atol=1e-2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for i in range(15):
        terms = model.elbo(d.values, d.times, d.mask, t0=0.0, generator=torch.Generator().manual_seed(i))
        assert torch.isfinite(terms.elbo).all() and (terms.kl >= 0).all()
        loss = -terms.elbo.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_adjoint_gradients_match_backprop():
    d = make_spirals(8, 30, seed=0)
    grads = []
    for adjoint in (False, True):
        torch.manual_seed(0)
        model = LatentODE(rtol=1e-8, atol=1e-8, adjoint=adjoint).double()
        loss = -model.elbo(d.values.double(), d.times.double(), d.mask, t0=0.0, sample=False).elbo.mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        if adjoint:
            assert model.func.nfe_backward > 0
    # Both are exact up to the solver tolerances; compare relative to the gradient's size.
    assert (grads[0] - grads[1]).norm() < 1e-5 * grads[0].norm()


def test_rnn_baseline_shapes_and_masking():
    torch.manual_seed(0)
    rnn = RNNBaseline()
    values, times, mask, lengths = _ragged_batch()
    values, times = values.float(), times.float()
    pred, scored = rnn.filter(values, times, mask)
    assert pred.shape == (3, 7, 2) and torch.isfinite(pred).all()
    assert (scored.sum(1) == torch.tensor(lengths) - 1).all()
    assert torch.isfinite(rnn.loss(values, times, mask))
    fut = rnn.extrapolate(values, times, mask, torch.tensor([4.0, 4.5, 5.0]))
    assert fut.shape == (3, 3, 2) and torch.isfinite(fut).all()


# --------------------------------------------------------------------------------------------
# The training program.


def _tiny(tmp_path, **kw):
    base = dict(
        observations=30,
        iterations=6,
        out=tmp_path / "run",
        batch_size=8,
        n_spirals=16,
        n_test=6,
        tol=1e-2,
        log_every=1,
        eval_every=3,
        checkpoint_every=2,
        progress=False,
    )
    base.update(kw)
    return LatentTrainConfig(**base)


def test_train_latent_writes_run_and_resumes(tmp_path):
    summary = train_latent(_tiny(tmp_path, iterations=4))
    run = tmp_path / "run"
    assert (run / CHECKPOINT_NAME).is_file() and (run / SPIRALS_FIGURE).is_file() and (run / LATENT_FIGURE).is_file()
    records = read_latent_metrics(run)
    steps = [r for r in records if "elbo" in r]
    assert [r["iteration"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert {"iteration", "elbo", "nfe_forward", "nfe_backward"} <= r.keys() and math.isfinite(r["elbo"])
    final = records[-1]
    for key in ("extrapolation_rmse", "reconstruction_rmse", "rnn_extrapolation_rmse", "rnn_reconstruction_rmse"):
        assert math.isfinite(final[key]) and final[key] == summary[key]
    assert summary["iteration"] == 4 and summary["interrupted"] is None

    with pytest.raises(FileExistsError, match="--resume"):
        train_latent(_tiny(tmp_path, iterations=4))
    summary = train_latent(_tiny(tmp_path, iterations=6, resume=True, plot=False))
    assert summary["iteration"] == 6
    steps = [r["iteration"] for r in read_latent_metrics(run) if "elbo" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    json.loads((run / "config.json").read_text())


def test_resume_is_deterministic(tmp_path):
    # A constant rate: the decay schedule is stretched when a resumed run raises `iterations`.
    straight = train_latent(_tiny(tmp_path / "a", iterations=4, plot=False, lr_decay=1.0))
    train_latent(_tiny(tmp_path / "b", iterations=2, plot=False, lr_decay=1.0))
    resumed = train_latent(_tiny(tmp_path / "b", iterations=4, plot=False, resume=True, lr_decay=1.0))
    for key in ("extrapolation_rmse", "rnn_extrapolation_rmse"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6)


def test_resume_rejects_other_data(tmp_path):
    train_latent(_tiny(tmp_path, iterations=2, plot=False))
    with pytest.raises(ValueError, match="observations"):
        train_latent(_tiny(tmp_path, iterations=4, observations=50, resume=True))


def test_config_errors():
    with pytest.raises(LatentConfigError, match="observations") as err:
        LatentTrainConfig(observations=40)
    assert err.value.field == "observations"
    with pytest.raises(LatentConfigError, match="batch_size"):
        LatentTrainConfig(batch_size=10, n_spirals=5)


def test_sigint_saves_and_returns(tmp_path):
    import os
    import signal
    import threading
    import time

    config = _tiny(tmp_path, iterations=100_000, plot=False)
    metrics = config.out / METRICS_NAME

    def interrupt():  # once training is under way (a metrics line exists), press Ctrl-C
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if metrics.is_file() and metrics.read_text().strip():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    threading.Thread(target=interrupt, daemon=True).start()
    summary = train_latent(config)
    assert summary["interrupted"] == "SIGINT" and 1 <= summary["iteration"] < 100_000
    assert (config.out / CHECKPOINT_NAME).is_file()
    resumed = train_latent(_tiny(tmp_path, iterations=summary["iteration"] + 2, plot=False, resume=True))
    assert resumed["iteration"] == summary["iteration"] + 2
