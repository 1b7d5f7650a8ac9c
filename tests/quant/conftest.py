"""Shared by every quant test: one torch thread, freed memory kept for reuse.

The suite runs two pytest workers on two cores; more torch threads per worker only fight each other (on a
busy machine, forwards were 10-100x slower with two threads than with one). Keeping freed memory
(:func:`aciq.quant.memory.retain_freed_memory`) spares the page faults of every large activation.
"""
import pytest
import torch

from aciq.quant.memory import retain_freed_memory

retain_freed_memory()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
