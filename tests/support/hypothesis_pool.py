"""Derandomized Hypothesis examples that do not depend on what else the process has imported.

Since 6.131, Hypothesis draws, with probability 0.05 per choice, a "local constant": a literal from any module of
this repository (not the standard library, not site-packages) that is in ``sys.modules`` at that moment
(``HypothesisProvider._maybe_draw_constant``, the pool from ``providers._get_local_constants``). Which modules
are loaded depends on what ran before in the same process: alone, the prune property saw ~600 literals; in a
pytest-xdist worker, which collects the whole suite, ~1,600. So ``derandomize=True`` gave other sequences there:
rule choices (a ``sampled_from`` index) and list sizes drew other literals, the sequences acquired many more
files and rarely advanced the clock past a due date, so they ran several times slower (~17 s instead of ~0.4 s
each in `make test`'s worker) and reached no crash. ``fixed_constants()`` pins the pool (empty) while a property
runs, so its examples are a function of the test and the Hypothesis version only;
tests/unit/test_hypothesis_pool.py checks that the pin still works with the installed Hypothesis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def fixed_constants() -> Iterator[None]:
    """Hypothesis's pool of local constants is empty inside this block, whatever modules are loaded; its cache
    of filtered pools is cleared on the way in and out. Fails (AttributeError) if Hypothesis renames what it
    patches, rather than silently leaving the examples order-dependent again."""
    from hypothesis.internal.conjecture import providers

    empty = providers.Constants()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(providers, "_get_local_constants", lambda: empty)  # raising=True: loud if renamed
        providers.CONSTANTS_CACHE.cache.clear()
        try:
            yield
        finally:
            providers.CONSTANTS_CACHE.cache.clear()
