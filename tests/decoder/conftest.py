"""Shared by the decoder tests: tiny batch-1 models run on one intra-op thread."""

from __future__ import annotations

import os

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


@pytest.fixture(scope="module")
def restore_offline_mode():
    """``cli.main`` switches Hugging Face offline mode on for the process: the modules that call it
    use this fixture to undo that for the modules after them."""
    import huggingface_hub.constants as hc

    env, const = os.environ.get("HF_HUB_OFFLINE"), hc.HF_HUB_OFFLINE
    yield
    hc.HF_HUB_OFFLINE = const
    if env is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = env
