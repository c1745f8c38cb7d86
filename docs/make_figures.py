"""Regenerate the tutorials' figures: run each example on the budget its tutorial states and copy
its figure into ``docs/figures/`` (``make docs-figures``; minutes on a 2-core CPU).

    python docs/make_figures.py [NAME ...]     # default: every example below

The tutorial pages include the scripts' source and these figures, so re-running this after an
example changes keeps page, script and picture in agreement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"
#: MNIST's IDX files where the project's machines keep them; elsewhere the example downloads them.
_SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
MNIST_DIR = ("--data-dir", str(_SHARED_MNIST)) if _SHARED_MNIST.is_dir() else ()

#: name: (script, its arguments (the budget the tutorial states), figures it writes into --out).
EXAMPLES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "bouncing_ball": ("bouncing_ball.py", (), ("bouncing_ball.png",)),
    "per_sample_vdp": ("per_sample_vdp.py", (), ("per_sample_steps.png", "per_sample_controllers.png")),
    "per_sample_bounces": ("per_sample_bounces.py", (), ("per_sample_bounces.png",)),
    "stiff_robertson": ("stiff_robertson.py", ("--iters", "40"), ("stiff_robertson.png",)),
    "cnf_2d": ("cnf_2d.py", ("--iterations", "150"), ("cnf_2d.png",)),
    "flow_matching_2d": ("flow_matching_2d.py", (), ("flow_matching_2d.png",)),
    "latent_ode_spirals": ("latent_ode_spirals.py", ("--iterations", "300"), ("latent_ode_spirals.png",)),
    "mnist_odenet": (
        "mnist_odenet.py",
        ("--iterations", "30", "--train", "2000", "--test", "500", *MNIST_DIR),
        ("mnist_odenet.png",),
    ),
}


def run(name: str) -> None:
    script, args, figures = EXAMPLES[name]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / script), *args, "--out", out], check=True, env=env, cwd=ROOT
        )
        for figure in figures:
            shutil.copyfile(Path(out) / figure, FIGURES / figure)
        print(f"{name}: {', '.join(figures)} in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", choices=[[], *EXAMPLES], metavar="NAME", help=f"any of {', '.join(EXAMPLES)}"
    )
    names = parser.parse_args().names or list(EXAMPLES)
    FIGURES.mkdir(parents=True, exist_ok=True)
    for name in names:
        run(name)


if __name__ == "__main__":
    main()
