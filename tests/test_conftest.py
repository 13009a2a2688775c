"""The root conftest: ``gpu`` tests are skipped without CUDA (with the reason), ``slow`` ones run and deselect."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest_plugins = ["pytester"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip on a machine without CUDA")
def test_gpu_tests_are_skipped_without_cuda_and_slow_ones_run(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_markers="""
        import pytest

        @pytest.mark.gpu
        def test_needs_cuda():
            raise AssertionError("must not run without CUDA")

        @pytest.mark.slow
        def test_slow():
            pass
    """)
    result = pytester.runpytest("-ra", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs a CUDA device*"])
    pytester.runpytest("-m", "not slow", "-p", "no:cacheprovider").assert_outcomes(skipped=1, deselected=1)
