"""The shared run machinery, for every task: config <-> flag round trips, the lock, torn metrics
lines, bad --out, the resume rule, plot/eval of every run kind, and resuming after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

from neuralode.cli import main
from neuralode.cli.flags import flag_of, given_settings
from neuralode.cli.train import TASKS
from neuralode.training.cnf import CNFTrainConfig
from neuralode.training.config import ConfigError, base_type, field_types
from neuralode.training.flow import FlowTrainConfig
from neuralode.training.latent import LatentTrainConfig
from neuralode.training.mnist import TrainConfig
from neuralode.training.rundir import RunDir, RunLockedError, read_jsonl

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mnist"
needs_data = pytest.mark.skipif(
    not (DATA / "train-images-idx3-ubyte.gz").is_file(), reason=f"real MNIST not found in {DATA}"
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
CONFIGS = [TrainConfig, CNFTrainConfig, FlowTrainConfig, LatentTrainConfig]


TINY_CNF = [
    "--iterations",
    "6",
    "--batch-size",
    "32",
    "--hidden-dims",
    "8",
    "--tol",
    "1e-3",
    "--test-samples",
    "100",
    "--log-every",
    "2",
    "--checkpoint-every",
    "3",
    "--no-progress",
    "--no-plot",
]
TINY_SPIRALS = [
    "--iterations",
    "6",
    "--observations",
    "30",
    "--batch-size",
    "8",
    "--n-spirals",
    "16",
    "--n-test",
    "4",
    "--tol",
    "1e-2",
    "--eval-every",
    "0",
    "--log-every",
    "2",
    "--checkpoint-every",
    "3",
    "--no-progress",
    "--no-plot",
]


# --------------------------------------------------------------------------------------------
# Config <-> flag.


def _other_value(cls, f):
    """A valid value for field ``f`` different from its default, and the flag words that set it."""
    kind, default = base_type(field_types(cls)[f.name]), f.default
    if "choices" in f.metadata:
        value = next(c for c in f.metadata["choices"] if c != default)
    elif kind is bool:
        return (not default), [flag_of(f.name) if not default else "--no-" + f.name.replace("_", "-")]
    elif kind is tuple:
        value = (tuple(x / 2 if isinstance(x, float) else x + 1 for x in default)) if default else (1,)
        return value, [flag_of(f.name), *map(str, value)]
    elif kind is Path:
        value = Path("/tmp/some/where")
    elif kind is int:
        # A default of None is resolved from other settings (the flow task's data-dependent ones): 3 is valid.
        value = (default if default is not None else 2) + 1 if f.name not in ("train_subset", "test_subset") else 500
    elif kind is float:
        value = default / 2 if default else 0.5
    else:
        raise AssertionError(f"no test value for {cls.__name__}.{f.name}")
    return value, [flag_of(f.name), str(value)]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_has_a_flag_that_sets_it(cls):
    from neuralode.cli import build_parser

    task = next(t for t in TASKS if t.load()[0] is cls)
    parser = build_parser()
    for f in fields(cls):
        value, words = _other_value(cls, f)
        given = given_settings(parser.parse_args(["train", task.name, *words]), cls)
        assert set(given) == {f.name}  # the flag sets this field and no other
        # Flow settings valid only beside another: reflow_from with the independent coupling (the
        # default is OT), conditional with labelled data (the default is 8gaussians).
        extra = (
            {"reflow_from": {"coupling": "independent"}, "conditional": {"dataset": "digits"}}.get(f.name, {})
            if cls is FlowTrainConfig
            else {}
        )
        config = cls.from_dict({**given, **extra})
        assert getattr(config, f.name) == value, f.name
        assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # through config.json and back


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_config_errors_name_class_field_value(cls):
    with pytest.raises(ConfigError) as info:
        cls(log_every=0)
    assert info.value.field == "log_every"
    assert str(info.value) == f"{cls.__name__}.log_every must be a positive integer; got 0."
    with pytest.raises(ConfigError, match=rf"{cls.__name__}.device must be one of auto, cpu, cuda; got 'tpu'."):
        cls(device="tpu")


# --------------------------------------------------------------------------------------------
# The run folder: lock, torn lines, bad --out.


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    config = CNFTrainConfig(out=tmp_path / "run")
    with RunDir(config.out, "cnf") as first:
        first.open(config)
        with pytest.raises(RunLockedError) as info:
            RunDir(config.out, "cnf").open(config)
        assert str(info.value).startswith(f"{config.out} is in use: process {os.getpid()} on ")
        assert "Wait for it to finish or stop it, or choose another --out." in str(info.value)
    RunDir(config.out, "cnf").open(config)  # released on close


def test_a_stale_lock_from_a_killed_process_is_taken_over(tmp_path, capfd):
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, time
        from neuralode.training.cnf import CNFTrainConfig
        from neuralode.training.rundir import RunDir
        RunDir({str(out)!r}, "cnf").open(CNFTrainConfig(out={str(out)!r}))
        print("locked", flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"process {holder.pid} on "):
            RunDir(out, "cnf").open(CNFTrainConfig(out=out))
        err = _exit_error(["train", "cnf", "--out", str(out), *TINY_CNF], capfd)
        assert f"argument --out: {out} is in use: process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".lock").read_text().split()[0] == str(holder.pid)  # SIGKILL left its lock file behind
    run = RunDir(out, "cnf")
    run.open(CNFTrainConfig(out=out))
    assert f"taking over the stale lock of process {holder.pid}, which is no longer running" in capfd.readouterr().err
    run.close()


def test_the_metrics_reader_skips_a_torn_last_line_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3, "lo')
    assert read_jsonl(path) == [{"iteration": 1}, {"iteration": 2}]
    path.write_text('{"iteration": 1}\n{"itera\n{"iteration": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}, line 2: not valid JSON; the file is damaged."):
        read_jsonl(path)


def _exit_error(argv, capfd) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capfd.readouterr().err


@pytest.mark.parametrize("task, tiny", [("cnf", TINY_CNF), ("spirals", TINY_SPIRALS)])
def test_bad_out_is_an_error_naming_out(task, tiny, tmp_path, capfd):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err = _exit_error(["train", task, "--out", str(a_file), *tiny], capfd)
    assert "Traceback" not in err
    assert f"argument --out: the run folder {str(a_file)!r} exists and is not a folder; choose another path." in err
    err = _exit_error(["train", task, "--out", str(a_file / "run"), *tiny], capfd)
    assert (
        f"argument --out: cannot create the run folder {str(a_file / 'run')!r}: {str(a_file)!r} is a file, not a folder."
        in err
    )
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        err = _exit_error(["train", task, "--out", str(locked / "run"), *tiny], capfd)
        assert (
            f"argument --out: cannot write the run folder {str(locked / 'run')!r}: no write permission in {str(locked)!r}."
            in err
        )
    else:  # root may write anywhere a permission bit forbids; /proc refuses even root
        err = _exit_error(["train", task, "--out", "/proc/neuralode-run", *tiny], capfd)
        assert "argument --out: cannot " in err and "/proc/neuralode-run" in err


# --------------------------------------------------------------------------------------------
# The resume rule, and plot / eval, from the command line.


@pytest.mark.parametrize("task, tiny", [("cnf", TINY_CNF), ("spirals", TINY_SPIRALS)])
def test_resume_keeps_saved_settings_and_overrides_given_ones_then_plot_and_eval(task, tiny, tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["train", task, "--out", str(out), *tiny]) == 0
    capfd.readouterr()
    assert (
        main(["train", task, "--out", str(out), "--resume", "--no-progress"]) == 0
    )  # nothing left: iterations stays 6
    err = capfd.readouterr().err
    assert f"Resuming {out} with its saved settings." in err
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["iterations"] == 6 and saved["batch_size"] == 32 if task == "cnf" else saved["iterations"] == 6
    assert main(["train", task, "--out", str(out), "--resume", "--iterations", "8"]) == 0
    err = capfd.readouterr().err
    assert f"Resuming {out} with its saved settings, except iterations: 6 -> 8." in err
    assert f"Resuming {out} from its checkpoint at iteration 6." in err
    lines = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in lines if not r.get("final")] == [2, 4, 6, 8]
    assert sum(bool(r.get("final")) for r in lines) == 1
    # Changing a setting that shapes the weights is refused, naming it.
    err = _exit_error(["train", task, "--out", str(out), "--resume", "--seed", "3"], capfd)
    assert "argument --resume: Cannot resume" in err and "seed: saved 0, now 3" in err
    # plot and eval read every kind.
    assert main(["plot", str(out)]) == 0
    png = out / "learning_curves.png"
    assert capfd.readouterr().out.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["iteration"] == 8


def test_cnf_report_prints_the_nll_once_with_the_nfe_of_the_metrics(tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["train", "cnf", "--out", str(out), *TINY_CNF]) == 0
    captured = capfd.readouterr()
    final = read_jsonl(out / "metrics.jsonl")[-1]
    assert captured.out.count("NLL") == 1 and "NLL" not in captured.err
    assert f"test NLL {final['test_nll']:.4f} nats" in captured.out
    assert f"forward {final['nfe_forward_mean']:.1f}, backward {final['nfe_backward_mean']:.1f}" in captured.out


@needs_data
def test_mnist_flag_errors_from_the_data(tmp_path, capfd):
    err = _exit_error(
        ["train", "mnist", "--out", str(tmp_path / "r"), "--data-dir", str(DATA), "--train-subset", "10000000"], capfd
    )
    assert (
        "argument --train-subset: TrainConfig.train_subset: subset must be between 1 and 60000 for the train split; got 10000000."
        in err
    )


@needs_data
def test_mnist_mlp_summary_says_no_ode_and_plot_draws_intervals(tmp_path, capfd):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "mnist",
                "--model",
                "mlp",
                "--epochs",
                "1",
                "--train-subset",
                "256",
                "--test-subset",
                "64",
                "--batch-size",
                "32",
                "--log-every",
                "2",
                "--data-dir",
                str(DATA),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    captured = capfd.readouterr()
    assert "NFE-F 0.0" not in captured.out and "no ODE solver (NFE 0)" in captured.out
    lines = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in lines if "epoch" not in r] == [2, 4, 6, 8]
    assert [r["epoch"] for r in lines if "epoch" in r] == [1]
    assert (out / "learning_curves.png").stat().st_size > 5000


def test_ctrl_c_messages_start_their_own_lines_beside_the_progress_bar(tmp_path):
    """A real SIGINT to `neuralode train spirals` with its progress bar on (stderr is not a TTY, so
    tqdm draws with carriage returns): neither message may continue the bar's line."""
    import time

    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "neuralode",
        "train",
        "spirals",
        *TINY_SPIRALS[2:],
        "--iterations",
        "100000",
        "--progress",
        "--log-every",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    segments = [seg.strip() for line in stderr.split("\n") for seg in line.split("\r")]
    for start in ("SIGINT received: saving a checkpoint after this step", "Stopped by SIGINT at iteration "):
        assert any(seg.startswith(start) for seg in segments), (start, stderr[-1500:])
        assert not any(start in seg and not seg.startswith(start) for seg in segments), (start, stderr[-1500:])
    assert f"Resume with: neuralode train spirals --out {out} --resume" in stderr


# --------------------------------------------------------------------------------------------
# SIGKILL at a checkpoint and between checkpoints: resuming loses and repeats no metrics line.

_KILLER = textwrap.dedent("""
    import os, signal, sys
    from neuralode.cli import main
    from neuralode.training import rundir
    what, n = sys.argv[1], int(sys.argv[2])
    count = {"n": 0}
    real = getattr(rundir.RunDir, what)
    def counted(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(rundir.RunDir, what, counted)
    sys.exit(main(sys.argv[3:]))
""")

TIMING = {"seconds", "eval_seconds", "samples_per_second", "wall_seconds"}


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _kill_then_resume(tmp_path, argv, what, n):
    out = tmp_path / f"{what}-{n}"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, what, str(n), *argv, "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert main([*argv[:2], "--out", str(out), "--resume"]) == 0
    return read_jsonl(out / "metrics.jsonl")


@pytest.mark.parametrize("task, tiny", [("cnf", TINY_CNF), ("spirals", TINY_SPIRALS)])
def test_killed_at_a_checkpoint_or_between_resumes_with_each_line_once(task, tiny, tmp_path):
    argv = ["train", task, *tiny]
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    # save #1 is the checkpoint at iteration 3; append #2 the line of iteration 4, after that checkpoint.
    for what, n in (("save", 1), ("append", 2)):
        records = _kill_then_resume(tmp_path, argv, what, n)
        assert _without_timing(records) == _without_timing(straight), (what, n)


@needs_data
def test_mnist_killed_at_a_checkpoint_or_between_resumes_with_each_line_once(tmp_path):
    argv = [
        "train",
        "mnist",
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--train-subset",
        "256",
        "--test-subset",
        "64",
        "--batch-size",
        "64",
        "--log-every",
        "1",
        "--checkpoint-every",
        "2",
        "--data-dir",
        str(DATA),
        "--no-progress",
        "--no-plot",
    ]
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    for what, n in (("save", 1), ("append", 3)):  # the mid-epoch checkpoint at step 2; the line of step 3 after it
        records = _kill_then_resume(tmp_path, argv, what, n)
        assert _without_timing(records) == _without_timing(straight), (what, n)


# --------------------------------------------------------------------------------------------
# Startup: what `import neuralode` and `neuralode --help` import (their time is in the README).


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys; print(' '.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split())


def test_import_and_help_load_neither_plotting_nor_the_tasks():
    heavy = {
        "matplotlib",
        "neuralode.plotting",
        "neuralode.training.mnist",
        "neuralode.training.cnf",
        "neuralode.training.latent",
        "neuralode.datasets.mnist",
        "neuralode.models",
    }
    assert not heavy & _modules_after("import neuralode")
    after_help = _modules_after(
        "import contextlib, io\nfrom neuralode.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    try: main(['--help'])\n    except SystemExit: pass"
    )
    assert "neuralode.cli.train" in after_help and not heavy & after_help


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("task, tiny", [("cnf", TINY_CNF), ("spirals", TINY_SPIRALS)])
def test_device_cuda_without_cuda_names_the_flag(task, tiny, tmp_path, capfd):
    err = _exit_error(["train", task, "--out", str(tmp_path / "run"), *tiny, "--device", "cuda"], capfd)
    assert "argument --device: device is 'cuda' but CUDA is not available here; use 'cpu' or 'auto'." in err
