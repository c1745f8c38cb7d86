"""The flow task's training loop: the moving average of the weights (its closed form, its checkpoint
and an exact resume after a kill) and the minibatch OT coupling as the loop applies it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import neuralode.training.flow as flow
from neuralode.training.config import ConfigError
from neuralode.training.flow import FlowTrainConfig, WeightEMA, evaluation_weights, load_flow_checkpoint, train_flow

TINY = dict(
    hidden_dims=(16, 16),
    batch_size=32,
    test_samples=200,
    table_samples=32,
    table_steps=(1,),
    table_tolerances=(1e-2,),
    tol=1e-3,
    log_every=5,
    checkpoint_every=10,
    checkpoint_seconds=0.0,
    progress=False,
    plot=False,
    mle_finetune=0,
)


def test_weight_ema_is_the_normalised_exponential_mean_of_the_iterates():
    torch.manual_seed(0)
    model, beta = nn.Linear(3, 2).double(), 0.9
    ema = WeightEMA(model, beta)
    iterates = []
    for _ in range(7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        iterates.append([p.detach().clone() for p in model.parameters()])
        ema.update(model)
        k = len(iterates)
        weights = [beta ** (k - j) * (1 - beta) / (1 - beta**k) for j in range(1, k + 1)]
        assert sum(weights) == pytest.approx(1.0)
        for i, avg in enumerate(ema.model.parameters()):
            expected = sum(w * it[i] for w, it in zip(weights, iterates))
            torch.testing.assert_close(avg, expected, rtol=1e-12, atol=1e-12)
    assert ema.updates == 7
    assert not any(p.requires_grad for p in ema.model.parameters())
    with pytest.raises(ValueError, match="decay must be a float in"):
        WeightEMA(model, 1.0)


def _weights(state: dict, key: str) -> dict[str, torch.Tensor]:
    return state[key]["model"] if key == "ema" else state[key]


def test_a_killed_run_resumes_to_the_same_weights_and_average(tmp_path, monkeypatch):
    settings = dict(TINY, iterations=30, seed=4, ema=0.999)
    reference = train_flow(FlowTrainConfig(out=tmp_path / "ref", **settings))
    assert reference["final"] is not None

    real_loss, calls = flow.cfm_loss, []

    def dies_at_step_25(*args, **kwargs):
        calls.append(1)
        if len(calls) == 25:
            raise RuntimeError("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(flow, "cfm_loss", dies_at_step_25)
    with pytest.raises(RuntimeError, match="killed"):
        train_flow(FlowTrainConfig(out=tmp_path / "run", **settings))
    monkeypatch.setattr(flow, "cfm_loss", real_loss)
    saved = load_flow_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["iteration"] == 20 and saved["ema"]["updates"] == 20
    train_flow(FlowTrainConfig(out=tmp_path / "run", resume=True, **settings))

    a = load_flow_checkpoint(tmp_path / "run" / "checkpoint.pt")
    b = load_flow_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 30
    assert a["ema"]["updates"] == b["ema"]["updates"] == 30 and a["ema"]["decay"] == 0.999
    for key in ("model", "ema"):
        for name, value in _weights(b, key).items():
            assert torch.equal(_weights(a, key)[name], value), (key, name)
    # The average is what is evaluated, and it is not the trained weights.
    assert evaluation_weights(a) == a["ema"]["model"]
    assert not torch.equal(a["ema"]["model"]["out.weight"], a["model"]["out.weight"])


def test_ema_zero_evaluates_the_trained_weights_and_a_changed_decay_is_refused(tmp_path):
    out = tmp_path / "run"
    train_flow(FlowTrainConfig(out=out, **dict(TINY, iterations=10, ema=0.0)))
    state = load_flow_checkpoint(out / "checkpoint.pt")
    assert state["ema"] is None and evaluation_weights(state) == state["model"]

    other = tmp_path / "other"
    train_flow(FlowTrainConfig(out=other, **dict(TINY, iterations=10, ema=0.99)))
    with pytest.raises(ConfigError, match=r"decay 0\.99 and this run asks for 0\.9; resume with --ema 0\.99"):
        train_flow(FlowTrainConfig(out=other, resume=True, **dict(TINY, iterations=20, ema=0.9)))


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), "0.9"])
def test_bad_ema_names_the_setting(bad):
    with pytest.raises(ConfigError, match=r"FlowTrainConfig\.ema must be a decay in \[0, 1\)"):
        FlowTrainConfig(ema=bad)


class _Recorder(nn.Module):
    """A zero velocity field that keeps the points it was evaluated at."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return torch.zeros_like(x)


def test_the_ot_coupling_pairs_a_permutation_of_the_noise_of_least_total_cost():
    """At t = 0 on the linear path the field sees the noise as cfm_loss paired it with the data: a
    permutation of the batch's noise whose summed squared distance is scipy's optimum."""
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(5)
    x0, x1 = torch.randn(40, 2, generator=g, dtype=torch.float64), torch.randn(40, 2, generator=g, dtype=torch.float64)
    x1[:20] += 3.0  # two clusters of data: the optimal pairing is far from the identity
    model = _Recorder()
    flow.cfm_loss(model, x1, coupling="ot", x0=x0, t=torch.zeros(40, dtype=torch.float64))
    paired = model.seen[0]
    # A permutation of the rows of x0 (each used once).
    match = torch.cdist(paired, x0).argmin(1)
    assert torch.equal(paired, x0[match]) and sorted(match.tolist()) == list(range(40))
    cost = torch.cdist(x1, x0).square().numpy()
    rows, cols = linear_sum_assignment(cost)
    assert ((paired - x1) ** 2).sum().item() == pytest.approx(cost[rows, cols].sum(), rel=1e-12)
    assert ((paired - x1) ** 2).sum().item() < ((x0 - x1) ** 2).sum().item()


# The maximum-likelihood fine-tune after flow matching.

FINETUNE = dict(TINY, iterations=8, mle_finetune=8, log_every=3, checkpoint_every=4, mle_tol=1e-2, test_samples=100)


def test_the_fine_tune_follows_flow_matching_and_logs_its_likelihood(tmp_path):
    out = tmp_path / "run"
    summary = train_flow(FlowTrainConfig(out=out, **FINETUNE))
    assert summary["iterations_completed"] == 16
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    training, final = lines[:-1], lines[-1]
    # Flow-matching lines at 3, 6 and the phase's end (8); fine-tune lines at 9, 12, 15 and the end (16).
    assert [r["iteration"] for r in training] == [3, 6, 8, 9, 12, 15, 16]
    assert all("loss" in r and "phase" not in r for r in training[:3])
    for r in training[3:]:
        assert r["phase"] == "mle" and "loss" not in r and r["nfe_forward"] == 8  # the default: 4 midpoint steps
        assert 0 < r["nll"] < 10
    # The fine-tune's rate restarts at mle_lr and decays to 0 over its own iterations.
    assert training[3]["lr"] == pytest.approx(flow.cosine_lr(flow.MLE_LR, 0, 8))
    assert training[-1]["lr"] == pytest.approx(flow.cosine_lr(flow.MLE_LR, 7, 8))
    assert final["final"] and final["iteration"] == 16 and final["seconds"] >= training[-1]["seconds"]
    # Without the fine-tune, the same seed gives the flow-matching weights of iteration 8: the fine-tune moved them.
    plain = train_flow(FlowTrainConfig(out=tmp_path / "plain", **dict(FINETUNE, mle_finetune=0)))
    assert plain["iterations_completed"] == 8
    a, b = (load_flow_checkpoint(p / "checkpoint.pt")["model"] for p in (out, tmp_path / "plain"))
    assert not torch.equal(a["out.weight"], b["out.weight"])


@pytest.mark.parametrize("die_at", [1, 6])
def test_a_run_killed_inside_the_fine_tune_resumes_exactly(tmp_path, monkeypatch, die_at):
    """Killed at the fine-tune's first step (the checkpoint is the flow-matching phase's last) or at its
    sixth (a checkpoint inside the fine-tune, with its own Adam moments): the resumed run ends with the
    uninterrupted run's weights, bit for bit."""
    reference = train_flow(FlowTrainConfig(out=tmp_path / "ref", **FINETUNE))
    assert reference["final"] is not None
    real, calls = flow.log_prob, []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == die_at:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(flow, "log_prob", dies)
    with pytest.raises(RuntimeError, match="killed"):
        train_flow(FlowTrainConfig(out=tmp_path / "run", **FINETUNE))
    monkeypatch.setattr(flow, "log_prob", real)
    saved = load_flow_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["iteration"] == (8 if die_at == 1 else 12)
    train_flow(FlowTrainConfig(out=tmp_path / "run", resume=True, **FINETUNE))
    a = load_flow_checkpoint(tmp_path / "run" / "checkpoint.pt")
    b = load_flow_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 16
    for name, value in b["model"].items():
        assert torch.equal(a["model"][name], value), name
    ra, rb = (
        [json.loads(s) for s in (tmp_path / p / "metrics.jsonl").read_text().splitlines()] for p in ("run", "ref")
    )
    drop = ("seconds", "eval_seconds", "sampling")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == [
        {k: v for k, v in r.items() if k not in drop} for r in rb
    ]
    # Inside the fine-tune the flow-matching iteration count is fixed: it numbers the fine-tune's steps.
    if die_at == 6:
        with pytest.raises(ConfigError, match=r"iterations must stay 8 on resume.*--iterations 8"):
            train_flow(FlowTrainConfig(out=tmp_path / "ref", resume=True, **dict(FINETUNE, iterations=10)))


def test_a_fixed_step_fine_tune_solves_with_its_steps(tmp_path, monkeypatch):
    # --mle-method midpoint --mle-steps 3: every fine-tune step passes the method and the steps to
    # log_prob, which evaluates the field twice per midpoint step (6 evaluations a solve).
    real, seen = flow.log_prob, []

    def spy(*args, **kwargs):
        seen.append((kwargs.get("method", "dopri5"), kwargs.get("steps")))
        return real(*args, **kwargs)

    monkeypatch.setattr(flow, "log_prob", spy)
    out = tmp_path / "run"
    train_flow(FlowTrainConfig(out=out, **dict(FINETUNE, mle_finetune=3, mle_method="midpoint", mle_steps=3)))
    assert seen[:3] == [("midpoint", 3)] * 3 and set(seen[3:]) == {("dopri5", None)}  # then the evaluation's
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nfe_forward"] for r in lines if r.get("phase") == "mle"] == [6, 6]


def test_the_fine_tune_can_add_the_weighted_flow_matching_loss(tmp_path, monkeypatch):
    # mle_fm_weight: each fine-tune step also takes the flow-matching loss of its own batch; the logged
    # nll stays the likelihood alone (iteration 9, the first fine-tune step, starts from the same
    # weights with and without it: the same nll; the update then differs).
    real, calls = flow.cfm_loss, []

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(flow, "cfm_loss", spy)
    runs = {}
    for weight in (0.0, 0.5):
        calls.clear()
        out = tmp_path / f"w{weight}"
        train_flow(FlowTrainConfig(out=out, **dict(FINETUNE, mle_finetune=4, mle_fm_weight=weight)))
        assert len(calls) == 8 + (4 if weight else 0)
        lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
        runs[weight] = {r["iteration"]: r for r in lines if r.get("phase") == "mle"}
    assert runs[0.5][9]["nll"] == runs[0.0][9]["nll"]
    assert runs[0.5][12]["nll"] != runs[0.0][12]["nll"]
    with pytest.raises(ConfigError, match=r"FlowTrainConfig\.mle_fm_weight must be a non-negative finite number"):
        FlowTrainConfig(mle_fm_weight=-1.0)


def test_a_config_saved_before_the_fine_tune_solver_settings_reads_back_as_it_ran():
    saved = FlowTrainConfig(mle_finetune=800, batch_size=128).to_dict()
    for key in ("mle_method", "mle_fm_weight"):
        del saved[key]
    config = FlowTrainConfig.from_saved(saved)
    assert (config.mle_method, config.mle_fm_weight, config.mle_finetune) == ("dopri5", 0.0, 800)
    # Saved before the fine-tune existed: it ran none, whatever today's default for 2-D data.
    older = FlowTrainConfig(mle_finetune=0, iterations=2500, batch_size=256).to_dict()
    for key in ("mle_finetune", "mle_lr", "mle_tol", "mle_adjoint", "mle_method", "mle_steps", "mle_fm_weight"):
        del older[key]
    config = FlowTrainConfig.from_saved(older)
    assert (config.mle_finetune, config.iterations, config.batch_size) == (0, 2500, 256)
    assert FlowTrainConfig.from_saved(FlowTrainConfig().to_dict()) == FlowTrainConfig()
    # Settings given afresh (the command line's) are not a saved config: an explicit fine-tune takes today's
    # solver, as FlowTrainConfig(mle_finetune=800) does.
    given = FlowTrainConfig.from_dict({"mle_finetune": 800})
    assert given == FlowTrainConfig(mle_finetune=800)
    assert (given.mle_method, given.mle_fm_weight) == ("midpoint", 1.0)


def test_fine_tune_settings_are_checked():
    # The defaults depend on the data (the module docstring, "Defaults for 2-D data").
    toy = FlowTrainConfig()
    assert (toy.iterations, toy.batch_size, toy.mle_finetune, toy.mle_method, toy.mle_fm_weight) == (
        500,
        128,
        1800,
        "midpoint",
        1.0,
    )
    digits = FlowTrainConfig(dataset="digits")
    assert (digits.iterations, digits.batch_size, digits.mle_finetune) == (2500, 256, 0)
    # Flow matching alone, as on images: the independent coupling (its curved paths are what a 4-step
    # likelihood gets wrong), a weight average, a reflow, or asked for.
    for no_finetune in (
        dict(coupling="independent"),
        dict(ema=0.999),
        dict(coupling="independent", reflow_from="runs/x"),
        dict(mle_finetune=0),
    ):
        config = FlowTrainConfig(**no_finetune)
        assert (config.iterations, config.batch_size, config.mle_finetune) == (2500, 256, 0), no_finetune
    assert FlowTrainConfig(mle_finetune=800).iterations == 500
    assert FlowTrainConfig(iterations=40, batch_size=64).to_dict()["batch_size"] == 64
    with pytest.raises(ConfigError, match=r"FlowTrainConfig\.ema must be 0 with a maximum-likelihood fine-tune"):
        FlowTrainConfig(mle_finetune=5, ema=0.999)
    with pytest.raises(ConfigError, match=r"FlowTrainConfig\.mle_finetune must be 0 with reflow_from"):
        FlowTrainConfig(mle_finetune=5, coupling="independent", reflow_from="runs/x")
    with pytest.raises(ConfigError, match=r"FlowTrainConfig\.mle_finetune must be an integer of at least 0"):
        FlowTrainConfig(mle_finetune=-1)
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ConfigError, match=r"FlowTrainConfig\.mle_tol must be a tolerance in \(0, 1\)"):
            FlowTrainConfig(mle_tol=bad)
    with pytest.raises(ConfigError, match=r"FlowTrainConfig\.mle_lr must be a positive finite number"):
        FlowTrainConfig(mle_lr=0.0)
    with pytest.raises(ConfigError, match=r"FlowTrainConfig\.mle_method must be one of dopri5, midpoint, rk4, euler"):
        FlowTrainConfig(mle_method="rk45")
    with pytest.raises(ConfigError, match=r"FlowTrainConfig\.mle_steps must be a positive integer"):
        FlowTrainConfig(mle_steps=0)
