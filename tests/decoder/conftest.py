"""Shared by the decoder tests: tiny batch-1 models run on one intra-op thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny batch-1 forwards gain nothing from intra-op threads; on a busy 2-core machine OpenMP
    threads waiting for each other made every op take a scheduler slice (measured 50x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
