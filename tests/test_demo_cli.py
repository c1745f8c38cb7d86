"""The demo, the figures and the command line: what ``neuralode demo`` promises, checked quickly."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from neuralode.cli import main
from neuralode.cli.demo_study import FIGURE_NAMES, DemoConfig, run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails unless the file starts as a PNG does."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str, Path]:
    """One quick demo run shared by the tests below: (result, stdout, output folder)."""
    out = tmp_path_factory.mktemp("demo") / "figures"  # does not exist yet: run_demo creates it
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        result = run_demo(DemoConfig.quick(out=out))
    return result, stdout.getvalue(), out


def rows_of(result: dict, method: str) -> list[dict]:
    return [r for r in result["convergence"] if r["method"] == method]


def test_writes_the_four_figures_as_real_pngs(quick_run):
    result, _, out = quick_run
    assert sorted(Path(p).name for p in result["files"]) == sorted(FIGURE_NAMES)
    for name in FIGURE_NAMES:
        path = out / name
        width, height = png_size(path)
        assert width >= 200 and height >= 200
        assert path.stat().st_size > 5_000, f"{name} is suspiciously small"
    # Atomic saves leave no temporary files behind.
    assert sorted(p.name for p in out.iterdir()) == sorted(FIGURE_NAMES)


def test_euler_error_halves_as_the_step_halves(quick_run):
    result, _, _ = quick_run
    euler = rows_of(result, "euler")
    assert len(euler) >= 3
    for previous, row in zip(euler, euler[1:]):
        assert row["step"] == pytest.approx(previous["step"] / 2)
        assert 1.7 <= row["ratio"] <= 2.3


def test_rk4_error_drops_sixteenfold_as_the_step_halves(quick_run):
    result, _, _ = quick_run
    for row in rows_of(result, "rk4")[1:]:
        assert 12 <= row["ratio"] <= 20


def test_dopri5_is_accurate_with_far_fewer_evaluations(quick_run):
    result, _, _ = quick_run
    finest_euler = rows_of(result, "euler")[-1]
    accurate = [r for r in rows_of(result, "dopri5") if r["error"] < 1e-5]
    assert accurate, "no dopri5 tolerance reached an error below 1e-5"
    assert accurate[0]["nfe"] < finest_euler["nfe"] / 4
    # ... while the finest Euler is still far from that accuracy.
    assert finest_euler["error"] > 1e-3


def test_training_loss_decreases(quick_run):
    result, _, _ = quick_run
    training = result["training"]
    assert training["final_loss"] < training["initial_loss"]
    losses = training["losses"]
    assert len(losses) == training["iterations"]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert training["nfe_total"] > 0


def test_prints_the_table_the_sentences_and_the_files(quick_run):
    _, stdout, out = quick_run
    assert "max error" in stdout and "NFE" in stdout
    assert "error halves as the step halves" in stdout
    assert "dopri5 at rtol = atol" in stdout
    assert "Full-trajectory loss" in stdout
    for name in FIGURE_NAMES:
        assert f"wrote {out / name}" in stdout


def test_cli_demo_quick_exits_zero(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FIGURE_NAMES)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--iterations", "0"], "argument --iterations: must be a positive integer, got 0"),
        (["demo", "--iterations", "many"], "argument --iterations: expected a positive integer, got 'many'"),
        (["demo", "--seed", "-1"], "argument --seed: must be a non-negative integer, got -1"),
        ([], "the following arguments are required: COMMAND"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_out_that_is_a_file_is_an_error(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--out", str(a_file)])
    assert exc.value.code == 2
    assert "argument --out" in capsys.readouterr().err


def test_cli_help_is_helpful(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "demo" in text and "COMMAND --help" in text
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--seed", "--iterations", "--quick"):
        assert flag in text


def test_demo_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match=r"DemoConfig.iterations must be a positive integer; got 0"):
        DemoConfig(iterations=0)
    with pytest.raises(ValueError, match=r"DemoConfig.batch_time"):
        DemoConfig(batch_time=1)


def test_plotting_functions_check_shapes():
    from neuralode import plotting

    with pytest.raises(ValueError, match="y_pred"):
        plotting.plot_trajectories([0.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="u and v"):
        plotting.plot_vector_field([0.0, 1.0], [0.0, 1.0, 2.0], [[0.0, 0.0]], [[0.0, 0.0]])
    assert plotting.loglog_slope([1, 10, 100], [1, 1e-2, 1e-4]) == pytest.approx(-2.0)


def test_save_figure_is_atomic(tmp_path):
    from neuralode import plotting

    path = tmp_path / "fig.png"
    plotting.save_figure(plotting.plot_phase_portrait([[0, 0], [1, 1]], [[0, 0], [1, 2]]), path)
    good = path.read_bytes()
    assert good.startswith(PNG_SIGNATURE)

    fig = plotting.plot_phase_portrait([[0, 0], [1, 1]], [[0, 0], [1, 2]])

    def broken_savefig(*args, **kwargs):
        raise RuntimeError("disk full")

    fig.savefig = broken_savefig
    with pytest.raises(RuntimeError, match="disk full"):
        plotting.save_figure(fig, path)
    assert path.read_bytes() == good  # the previous file survives a failed save
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # and no temporary file is left


def test_importing_the_library_does_not_import_matplotlib():
    code = "import sys, neuralode, neuralode.plotting, neuralode.cli.demo_study, neuralode.cli; print('matplotlib' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
