"""Suite-wide pytest set-up: the ``slow`` and ``gpu`` markers, and the skip of ``gpu`` tests without CUDA.

``@pytest.mark.gpu`` marks a test that needs a CUDA device; it is skipped (with the reason shown by ``-ra``)
where ``torch.cuda.is_available()`` is false, so ``make test`` passes on a CPU machine and runs them on a GPU one
(the model is lightning-hydra-template's ``RunIf``). ``@pytest.mark.slow`` marks the long tests, which still run
in ``make test``; deselect them with ``-m "not slow"`` for a quick loop.
"""

from __future__ import annotations

import pytest
import torch

MARKERS = {
    "slow": "long-running tests (still part of make test; deselect with -m 'not slow')",
    "gpu": "needs a CUDA device (skipped without one)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (tiny models are faster so, and timings stop depending on the load);
    use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
