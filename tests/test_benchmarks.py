"""The benchmark scripts stay runnable: each imports against the current code (they are run by hand, not by the
suite, and one had silently broken when a name it imported was renamed). Nothing here times anything."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


def test_there_are_benchmarks():
    assert {p.name for p in BENCHMARKS} >= {"bench_sample.py", "bench_train.py", "bench_explain.py", "bench_report.py"}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_and_has_a_main(script):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its imports resolve; `if __name__ == "__main__"` keeps it from running
    assert callable(module.main)
