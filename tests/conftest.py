"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module, set before its shared runs so that all runs match.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``. The training tests check
    correctness; on a shared 2-core machine a second OpenMP thread per process (beside the suite's
    other processes) makes small convolutions many times slower, not faster.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
