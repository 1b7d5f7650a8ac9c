"""Shared by every quant test: one torch thread.

The suite runs two pytest workers on two cores; more torch threads per worker only fight each other (on a
busy machine, forwards were 10-100x slower with two threads than with one).
"""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
