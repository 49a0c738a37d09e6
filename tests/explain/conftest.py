"""Shared fixtures of the explanation tests."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread (opt-in: ``pytestmark = pytest.mark.usefixtures("one_thread")``): on a small shared CPU,
    oversubscribed threads make tiny models 10-40x slower. Not for test_cam.py, whose module-scoped models compare
    logits computed under the default thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
