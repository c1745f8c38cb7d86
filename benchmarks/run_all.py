"""Run every benchmark script, each in its own process, and say where the results were written.

    python benchmarks/run_all.py [--quick] [--out DIR]      (``make bench`` runs it without flags)

Each script gets a fresh interpreter, so one benchmark's warm caches, allocator state or thread
pool cannot colour the next one's timings. The full run takes about ten minutes on two cores.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_args

SCRIPTS = {
    "bench_solvers.py": ["solvers.md", "detest_work_precision.png"],
    "bench_adjoint.py": ["adjoint.md", "adjoint_memory.png"],
    "bench_events.py": ["events.md"],
    "bench_stiff.py": ["stiff.md"],
}


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    here = Path(__file__).resolve().parent
    root = here.parent
    flags = (["--quick"] if args.quick else []) + ["--out", str(args.out)]
    start = time.perf_counter()
    failed = []
    for script in SCRIPTS:
        print(f"=== {script} {' '.join(flags)}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(here / script), *flags], cwd=root)
        print(f"=== {script}: exit {code} after {time.perf_counter() - t0:.0f} s\n", flush=True)
        if code != 0:
            failed.append(script)
    print(f"All benchmarks finished in {time.perf_counter() - start:.0f} s. Results:")
    for outputs in SCRIPTS.values():
        for name in outputs:
            path = args.out / name
            state = "" if path.exists() else "  (missing)"
            print(f"  {path}{state}")
    if failed:
        print(f"Failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
