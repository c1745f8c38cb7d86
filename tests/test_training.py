"""The training loop: configs, data order, metrics, checkpoints (atomic, verified), exact resumption
after SIGINT/SIGTERM, and data-parallel training on two CPU processes against one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from neuralode import plotting
from neuralode.models import build_classifier, count_parameters
from neuralode.training import mnist as training
from neuralode.training.mnist import (
    CheckpointError,
    ConfigError,
    TrainConfig,
    epoch_batches,
    evaluate,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    train,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_data = pytest.mark.skipif(
    not (DATA / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real MNIST not found in {DATA} (the repository is expected beside shared/data/mnist)",
)
REPO = Path(__file__).resolve().parents[1]

# Seconds and throughput differ between runs; everything else in a metrics record must not.
TIMING_KEYS = {"seconds", "eval_seconds", "samples_per_second"}


# One torch thread for the module's training runs (see tests/conftest.py).


def quick(tmp: Path, **overrides) -> TrainConfig:
    settings = dict(
        model="mlp",
        epochs=2,
        train_subset=256,
        test_subset=128,
        batch_size=64,
        data_dir=DATA,
        out=tmp,
        progress=False,
        plot=False,
        seed=1,
        lr_milestones=(0.5, 1.5),  # mid-epoch drops: resumes cross them
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(run_dir) / training.CHECKPOINT_NAME)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs by {(a[key] - b[key]).abs().max().item():.3g}"


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


# --------------------------------------------------------------------------------------------
# The config.


def test_config_defaults_are_the_papers():
    c = TrainConfig()
    assert (c.batch_size, c.lr, c.momentum, c.weight_decay) == (128, 0.1, 0.9, 0.0)
    assert (c.lr_milestones, c.lr_decay, c.tol, c.adjoint, c.augment) == ((60, 100, 140), 0.1, 1e-3, True, True)
    assert c.effective_lr == 0.1
    assert TrainConfig(batch_size=256).effective_lr == pytest.approx(0.2)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert json.loads(json.dumps(c.to_dict())) == c.to_dict()


def test_the_rate_drops_at_each_milestone_step_whole_or_fractional_epochs():
    paper = TrainConfig()
    assert [paper.lr_at(s, 468) for s in (0, 60 * 468 - 1, 60 * 468, 100 * 468, 140 * 468)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001, 0.0001]
    )
    c = TrainConfig(lr_milestones=[0.75, 2], lr_decay=0.5, batch_size=256)
    assert c.lr_milestones == (0.75, 2)
    # 10 steps per epoch: int(0.75 * 10) = step 7 is the first at half the rate, step 20 at a quarter.
    assert [c.lr_at(s, 10) for s in (0, 6, 7, 19, 20, 99)] == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"model": "vgg"}, "model", "TrainConfig.model must be one of odenet, rknet, resnet, mlp; got 'vgg'."),
        ({"epochs": 0}, "epochs", "TrainConfig.epochs must be a positive integer; got 0."),
        ({"batch_size": 2.5}, "batch_size", "TrainConfig.batch_size must be a positive integer; got 2.5."),
        ({"lr": -0.1}, "lr", "TrainConfig.lr must be a positive finite number; got -0.1."),
        ({"tol": float("nan")}, "tol", "TrainConfig.tol must be a positive finite number; got nan."),
        ({"device": "tpu"}, "device", "TrainConfig.device must be one of auto, cpu, cuda; got 'tpu'."),
        (
            {"lr_milestones": (100, 60)},
            "lr_milestones",
            "TrainConfig.lr_milestones must be increasing positive epoch counts (fractions allowed); got (100, 60).",
        ),
        (
            {"lr_milestones": [0, 1]},
            "lr_milestones",
            "TrainConfig.lr_milestones must be increasing positive epoch counts (fractions allowed); got (0, 1).",
        ),
        ({"test_subset": 0}, "test_subset", "TrainConfig.test_subset must be a positive integer or None; got 0."),
        (
            {"train_subset": 64},
            "train_subset",
            "TrainConfig.train_subset=64 is smaller than batch_size=128: no full batch to train on "
            "(incomplete batches are dropped). Lower the batch size or raise the subset.",
        ),
    ],
)
def test_config_errors_name_the_field(settings, field, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**settings)
    assert info.value.field == field
    assert str(info.value) == message


# --------------------------------------------------------------------------------------------
# Data order.


def test_epoch_batches_depend_on_seed_and_epoch_only_and_shards_reassemble_the_global_batch():
    single = epoch_batches(1000, 128, seed=5, epoch=3)
    assert len(single) == 7 and all(b.shape == (128,) for b in single)  # the last 104 are dropped
    assert len(set(torch.cat(single).tolist())) == 7 * 128
    assert all(torch.equal(a, b) for a, b in zip(single, epoch_batches(1000, 128, seed=5, epoch=3)))
    assert not torch.equal(single[0], epoch_batches(1000, 128, seed=5, epoch=4)[0])
    for world in (2, 4):
        shards = [epoch_batches(1000, 128, seed=5, epoch=3, rank=r, world_size=world) for r in range(world)]
        assert all(len(s) == 7 for s in shards)
        for k in range(7):
            together = torch.cat([s[k] for s in shards])
            assert sorted(together.tolist()) == sorted(single[k].tolist())
    with pytest.raises(ConfigError, match=r"must be divisible by the number of processes \(3\)"):
        epoch_batches(1000, 128, seed=0, epoch=0, world_size=3)


# --------------------------------------------------------------------------------------------
# A run: files and metrics.


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted 2-epoch runs (mlp and rknet) that the interrupted ones must reproduce."""
    if not (DATA / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found in {DATA}")
    runs = {}
    for model in ("mlp", "rknet"):
        out = tmp_path_factory.mktemp(f"ref-{model}")
        train(quick(out, model=model, plot=(model == "mlp")))
        runs[model] = out
    return runs


@needs_data
def test_a_run_writes_config_metrics_checkpoint_and_curves(reference_runs):
    out = reference_runs["mlp"]
    names = [
        "checkpoint.prev.pt",
        "checkpoint.pt",
        "config.json",
        "learning_curves.png",
        "metrics.jsonl",
    ]  # two epochs: two checkpoints
    assert sorted(p.name for p in out.iterdir()) == names
    saved = json.loads((out / "config.json").read_text())
    assert TrainConfig.from_dict(saved["config"]) == quick(out, plot=True)
    assert saved["run"]["effective_lr"] == 0.05 and saved["run"]["world_size"] == 1
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]
    params = count_parameters(build_classifier("mlp"))
    for r in records:
        for key in ("epoch", "train_loss", "test_error", "nfe_forward", "nfe_backward", "params", "seconds"):
            assert key in r
        assert 0 <= r["test_error"] <= 1 and r["params"] == params and r["seconds"] > 0
        assert r["train_samples"] == 256 and r["test_samples"] == 128
        assert r["nfe_forward"] == 0 and r["nfe_backward"] == 0
    assert [r["lr"] for r in records] == pytest.approx([0.05 * 0.1, 0.05 * 0.01])  # the rate of each epoch's last step
    assert records[1]["train_loss"] < records[0]["train_loss"]
    # evaluate() reloads the checkpoint and agrees with the last epoch's line.
    result = evaluate(out)
    assert result["test_error"] == pytest.approx(records[-1]["test_error"])
    assert result["epoch"] == 2 and result["test_samples"] == 128


@needs_data
def test_rknet_counts_four_evaluations_per_rk4_step(reference_runs):
    records = read_metrics(reference_runs["rknet"])
    assert all(r["nfe_forward"] == 4 and r["nfe_backward"] == 0 for r in records)


@needs_data
def test_tiny_odenet_run_reports_forward_and_adjoint_nfe(tmp_path):
    summary = train(quick(tmp_path, model="odenet", epochs=1, train_subset=64, test_subset=32, batch_size=32))
    final = summary["final"]
    assert summary["epochs_completed"] == 1 and summary["interrupted"] is None
    assert final["nfe_forward"] >= 6 and final["nfe_backward"] >= 6  # dopri5: at least one step each way
    assert final["nfe_forward"] == int(final["nfe_forward"] * 2) / 2  # a mean of two integer counts
    assert final["test_nfe_forward"] >= 6
    assert final["params"] == count_parameters(build_classifier("odenet"))


# --------------------------------------------------------------------------------------------
# Interruption and exact resumption.


@needs_data
@pytest.mark.parametrize(("model", "sig", "at_batch"), [("rknet", signal.SIGINT, 1), ("mlp", signal.SIGTERM, 3)])
def test_signal_mid_run_then_resume_gives_identical_weights(reference_runs, tmp_path, capsys, model, sig, at_batch):
    """A signal during epoch 1 of 2 (at batch ``at_batch`` of 4; batch 3 is the epoch's last)."""
    config = quick(tmp_path, model=model)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    sent = []

    def hook(epoch: int, batch: int) -> None:
        if not sent and (epoch, batch) == (0, at_batch):
            sent.append(True)
            os.kill(os.getpid(), sig)  # the real handler; the loop stops at this batch boundary

    summary = train(config, on_batch_end=hook)
    assert summary["interrupted"] == sig.name
    assert summary["epochs_completed"] == 0
    err = capsys.readouterr().err
    assert (
        f"Stopped by {sig.name} at epoch 1, batch {at_batch + 1}/4; checkpoint saved to {tmp_path / 'checkpoint.pt'}."
        in err
    )
    assert f"Resume with: neuralode train mnist --out {tmp_path} --resume" in err
    # The handlers are the ones before the run again (the default SIGINT handler raises KeyboardInterrupt;
    # a process started in the background inherits SIGINT ignored, and keeps it so).
    assert {s: signal.getsignal(s) for s in before} == before
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["position"] == {"epoch": 0, "batch": at_batch + 1}
    assert read_metrics(tmp_path) == []

    resumed = train(replace(config, resume=True))
    assert resumed["interrupted"] is None and resumed["epochs_completed"] == 2
    assert_same_weights(weights(tmp_path), weights(reference_runs[model]))
    # The interrupted epoch's metrics are whole: sums carried over in the checkpoint.
    assert without_timing(read_metrics(tmp_path)) == without_timing(read_metrics(reference_runs[model]))


@needs_data
def test_a_run_stopped_after_its_first_epoch_resumes_to_the_same_weights(reference_runs, tmp_path):
    """What a killed run leaves: the end-of-epoch checkpoint. Resuming with more epochs continues it."""
    train(quick(tmp_path, epochs=1))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["position"] == {"epoch": 1, "batch": 0}
    # A half-written metrics line from a kill is dropped; the checkpoint's history is the truth.
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "train_lo')
    assert len(read_metrics(tmp_path)) == 1
    summary = train(quick(tmp_path, epochs=2, resume=True))
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    assert_same_weights(weights(tmp_path), weights(reference_runs["mlp"]))
    assert without_timing(read_metrics(tmp_path)) == without_timing(read_metrics(reference_runs["mlp"]))
    # Nothing left to do: resuming a finished run is a no-op.
    again = train(quick(tmp_path, epochs=2, resume=True))
    assert again["epochs_completed"] == 2
    assert_same_weights(weights(tmp_path), weights(reference_runs["mlp"]))


@needs_data
def test_resume_guards(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"Cannot resume: no checkpoint.pt in {tmp_path}.")):
        train(quick(tmp_path, resume=True))
    train(quick(tmp_path, epochs=1))
    with pytest.raises(FileExistsError) as info:
        train(quick(tmp_path, epochs=1))
    assert str(info.value) == (
        f"{tmp_path} already holds a training run (checkpoint.pt). Pass --resume (resume=True) to continue it, "
        f"or choose another output folder."
    )
    with pytest.raises(CheckpointError) as info:
        train(quick(tmp_path, epochs=2, resume=True, seed=2, lr=0.05))
    assert str(info.value) == (
        f"Cannot resume {tmp_path / 'checkpoint.pt'}: these settings differ from the saved run's "
        f"(lr: saved 0.1, now 0.05; seed: saved 1, now 2). Resume with the saved settings, or start a new run in another folder."
    )


# --------------------------------------------------------------------------------------------
# Checkpoint integrity.


@pytest.fixture
def checkpoint_file(tmp_path) -> Path:
    model = build_classifier("mlp")
    return save_checkpoint(
        tmp_path / "c.pt", {"model": model.state_dict(), "note": [1, 2.5, None, "x", {"a": (True,)}]}
    )


def test_checkpoints_round_trip_and_open_with_plain_torch_load(checkpoint_file):
    state = load_checkpoint(checkpoint_file)
    plain = torch.load(checkpoint_file, weights_only=True)
    assert state["format"] == plain["format"] == training.CHECKPOINT_FORMAT
    assert state["note"] == [1, 2.5, None, "x", {"a": (True,)}]
    assert sorted(p.name for p in checkpoint_file.parent.iterdir()) == ["c.pt"]  # no temporary files


def test_truncated_checkpoint_is_refused(checkpoint_file):
    data = checkpoint_file.read_bytes()
    checkpoint_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(checkpoint_file)
    message = str(info.value)
    assert message.startswith(f"Checkpoint {checkpoint_file} is corrupt or truncated and cannot be read (")
    assert message.endswith("). Delete it (and start the run over without --resume) or restore it from a copy.")
    checkpoint_file.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is corrupt or truncated and cannot be read"):
        load_checkpoint(checkpoint_file)


def test_flipped_byte_inside_a_tensor_is_caught_by_the_digest(checkpoint_file):
    data = bytearray(checkpoint_file.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights: torch's zip reader does not notice
    checkpoint_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(checkpoint_file)
    assert str(info.value) == (
        f"Checkpoint {checkpoint_file} is corrupt: its contents do not match the SHA-256 recorded when it was "
        f"written. Delete it (and start the run over without --resume) or restore it from a copy."
    )


def test_foreign_files_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is not a neuralode MNIST training checkpoint.")):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"No checkpoint at {tmp_path / 'none.pt'}.")):
        load_checkpoint(tmp_path / "none.pt")


def test_a_failed_write_leaves_the_previous_checkpoint_intact(checkpoint_file, monkeypatch):
    before = checkpoint_file.read_bytes()

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(checkpoint_file, {"model": {}})
    assert checkpoint_file.read_bytes() == before
    assert sorted(p.name for p in checkpoint_file.parent.iterdir()) == ["c.pt"]


@needs_data
def test_training_refuses_to_resume_from_a_corrupt_checkpoint(tmp_path):
    train(quick(tmp_path, epochs=1))
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="is corrupt or truncated and cannot be read"):
        train(quick(tmp_path, epochs=2, resume=True))
    with pytest.raises(CheckpointError):
        evaluate(tmp_path)


# --------------------------------------------------------------------------------------------
# Learning curves.


def test_plot_learning_curves_panels_and_errors():
    fig = plotting.plot_learning_curves([1, 2, 3], [2.0, 1.0, 0.5], [0.5, 0.2, 0.1], [20, 26, 32], [30, 38, 44])
    assert len(fig.axes) == 3
    assert fig.axes[1].get_ylabel() == "test error (%)"
    assert list(fig.axes[1].lines[0].get_ydata()) == pytest.approx([50, 20, 10])
    fig = plotting.plot_learning_curves([1, 2], [2.0, 1.0], [0.5, 0.2], [0, 0], [0, 0])  # no ODE: no NFE panel
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match=r"one equal, non-zero length; got lengths \[2, 3\]"):
        plotting.plot_learning_curves([1, 2, 3], [2.0, 1.0], [0.5, 0.2, 0.1])


# --------------------------------------------------------------------------------------------
# Data parallel: two CPU processes under torchrun against one process.


@needs_data
def test_two_process_ddp_matches_one_process(tmp_path):
    common = [
        "--model",
        "rknet",
        "--epochs",
        "1",
        "--train-subset",
        "256",
        "--test-subset",
        "128",
        "--data-dir",
        str(DATA),
        "--device",
        "cpu",
        "--seed",
        "4",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    ddp_out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "neuralode",
        "train",
        "mnist",
        *common,
        "--out",
        str(ddp_out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("rknet: 1 epoch(s)") == 1  # only rank 0 reports

    single_out = tmp_path / "single"
    train(
        TrainConfig(
            model="rknet",
            epochs=1,
            train_subset=256,
            test_subset=128,
            data_dir=DATA,
            device="cpu",
            seed=4,
            out=single_out,
            progress=False,
            plot=False,
        )
    )
    ddp_w, single_w = weights(ddp_out), weights(single_out)
    assert ddp_w.keys() == single_w.keys()
    worst = max((ddp_w[k] - single_w[k]).abs().max().item() for k in ddp_w)
    assert worst < 1e-5
    # The weights moved: the comparison is not between two untouched initialisations.
    torch.manual_seed(4)
    init = build_classifier("rknet").state_dict()
    assert max((single_w[k] - init[k]).abs().max().item() for k in init) > 1e-3
    ddp_m, single_m = read_metrics(ddp_out), read_metrics(single_out)
    assert len(ddp_m) == 1 and ddp_m[0]["world_size"] == 2 and single_m[0]["world_size"] == 1
    assert ddp_m[0]["train_samples"] == single_m[0]["train_samples"] == 256
    assert ddp_m[0]["test_samples"] == 128
    assert ddp_m[0]["train_loss"] == pytest.approx(single_m[0]["train_loss"], rel=1e-5)
    assert ddp_m[0]["test_error"] == pytest.approx(single_m[0]["test_error"], abs=1 / 128)
    assert sorted(p.name for p in ddp_out.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "learning_curves.png",
        "metrics.jsonl",
    ]


@needs_data
def test_worker_processes_load_the_same_batches(reference_runs, tmp_path):
    """num_workers > 0 assembles the same batches in subprocesses: identical weights."""
    train(quick(tmp_path, num_workers=2))
    assert_same_weights(weights(tmp_path), weights(reference_runs["mlp"]))
