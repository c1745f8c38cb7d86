"""The package as a user receives it: one version, a wheel and an sdist that twine accepts, and the
wheel installed alone (no source tree on the path) runs the demo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import neuralode

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_is_pyprojects():
    declared = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert neuralode.__version__ == metadata.version("neuralode") == declared


def test_the_package_declares_its_type_hints():
    assert (Path(neuralode.__file__).parent / "py.typed").is_file()


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` (wheel from the sdist, as PyPI users would get it), without network:
    the build backend is the one installed beside the tests."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out


def test_build_makes_a_wheel_and_an_sdist_that_twine_accepts(dist):
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"neuralode-{neuralode.__version__}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"neuralode-{neuralode.__version__}.tar.gz"]
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2
    with zipfile.ZipFile(wheels[0]) as whl:
        assert "neuralode/py.typed" in whl.namelist()


def test_the_wheel_installed_alone_imports_and_runs_the_demo(dist, tmp_path):
    """A fresh virtual environment holding only the wheel, run from a folder outside the repository, so
    that nothing of the source tree can be imported.

    Its dependencies are the test environment's own packages (installed from ``constraints.txt``), put on
    the fresh environment's path by a ``.pth`` line: site directories named that way are added to
    ``sys.path`` but their own ``.pth`` files (the editable install's hook into ``src/``) are not run.
    Installing torch afresh from the registry's wheel took 168 s of this test's time on the 2-core CPU
    machine, against seconds this way; the wheel's declared requirements are checked against those
    packages instead.
    """
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site_packages = next((env_dir / "lib").glob("python3*/site-packages"))
    here = [p for p in sys.path if p.endswith("site-packages") and (Path(p) / "torch").is_dir()]
    (site_packages / "_pinned_dependencies.pth").write_text("\n".join(here) + "\n")
    wheel = next(dist.glob("*.whl"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    probe = (
        "import sys, neuralode\n"
        "from importlib import metadata\n"
        "from packaging.requirements import Requirement\n"
        "print(neuralode.__file__, neuralode.__version__)\n"
        "print(any(p.endswith('src') for p in sys.path))\n"
        "for r in map(Requirement, metadata.requires('neuralode')):\n"
        "    if r.marker is None:\n"
        "        assert r.specifier.contains(metadata.version(r.name), prereleases=True), (r, metadata.version(r.name))\n"
    )
    where = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-2000:]
    (path, version), src_on_path = where.stdout.split("\n")[0].split(), where.stdout.split("\n")[1]
    assert Path(path).is_relative_to(env_dir) and version == neuralode.__version__
    assert src_on_path == "False"
    demo = subprocess.run(
        [str(env_dir / "bin" / "neuralode"), "demo", "--quick", "--no-progress", "--out", "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "demo").glob("*.png")) == [
        "convergence.png",
        "phase_portrait.png",
        "trajectories.png",
        "vector_field.png",
    ]
