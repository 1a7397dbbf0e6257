"""Every script under benchmarks/ parses with the Python that runs the tests.

Most benchmarks run for minutes and are not run by the suite; this catches what would stop them
before they start (a syntax only newer Pythons accept, say) on the Python CI uses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_there_are_benchmark_scripts():
    assert any(p.name == "bench_detect.py" for p in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_parses(script):
    ast.parse(script.read_text(), filename=str(script))
