"""The guard for tests/support/hypothesis_pool.py: with the pool pinned, a derandomized property draws the same
examples after another module of this repository is imported as before (the prune property once drew other,
slower sequences in a pytest-xdist worker than alone, because other modules were loaded there)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import providers

from tests.support.hypothesis_pool import fixed_constants

LITERALS = range(1000, 1400, 7)  # in a new module: 1000, 1007, ... (between 0 and 10_000, as the property draws)


def _draws() -> list[tuple[int, bytes, list[int]]]:
    seen: list[tuple[int, bytes, list[int]]] = []

    @settings(max_examples=60, derandomize=True, database=None)
    @given(st.integers(0, 10_000), st.binary(min_size=1, max_size=20), st.lists(st.integers(0, 3), max_size=3))
    def probe(i: int, b: bytes, xs: list[int]) -> None:
        seen.append((i, b, xs))

    probe()
    return seen


def test_pinned_examples_do_not_depend_on_the_modules_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fixed_constants():
        before = _draws()
    (tmp_path / "splash_pool_probe.py").write_text(f"LITERALS = {list(LITERALS)!r}\nBLOB = b'pool-probe'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("splash_pool_probe")
    # what the pin is for: loading a module of ours feeds its literals to every later draw
    assert set(LITERALS) <= set(providers._get_local_constants().set_for_type("integer"))
    with fixed_constants():
        assert not providers._get_local_constants().set_for_type("integer")
        after = _draws()
    assert after == before
