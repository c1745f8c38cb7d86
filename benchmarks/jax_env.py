"""One CPU thread for JAX beside torch's one thread, for the benchmarks that time diffrax.

XLA reads these variables when jax is first imported, so :func:`one_thread` must run before that
(before torch too, for ``OMP_NUM_THREADS``); this module imports neither.
"""

import os

XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def one_thread() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    flags = os.environ.get("XLA_FLAGS", "")
    if XLA_ONE_THREAD not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_ONE_THREAD}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
