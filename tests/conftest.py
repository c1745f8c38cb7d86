"""Settings shared by the whole test suite.

One intra-op thread, in this process and (through ``OMP_NUM_THREADS``) in every process a test starts.
The tests run tiny tensor operations, where a second OpenMP thread buys nothing; on a machine whose two
cores are shared with other jobs it costs a great deal, since each operation waits for a thread that is not
scheduled: one adjoint-memory test took 2 s with one thread and 36 s with two under a load average of 8, and
small convolutions slow down the same way. Setting it once, before any test runs, also makes every test see
the same arithmetic whatever order the tests run in.
"""

import os

import pytest
import torch

os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture
def handed(monkeypatch):
    """What each call of the joint device run (``neuralode.solvers.fast.device_run.integrate_on_device``) returned:
    ``(LoopResult, None)`` for a solve it finished, ``(None, Handover)`` where it handed the solve to the host clock,
    ``(None, None)`` where it was not compiled."""
    from neuralode.solvers.fast import device_run

    out = []
    real = device_run.integrate_on_device
    monkeypatch.setattr(device_run, "integrate_on_device", lambda *a, **k: out.append(real(*a, **k)) or out[-1])
    return out
