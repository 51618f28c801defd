"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch intra-op thread (as targets build networks), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
