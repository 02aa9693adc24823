"""Fixtures shared by the grrl_trainer tests."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread, as in the training and evaluation workers: two threads on two shared
    cores spin against other processes' work (a BC test took 113 s that way, 6 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
