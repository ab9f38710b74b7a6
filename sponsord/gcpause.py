"""Pausing the cyclic garbage collector around one burst of allocations.

Decoding a page of 1,000 members, or building the roster and snapshot of
10,000, allocates hundreds of thousands of dicts and strings in one go. None
of them form reference cycles (refcounting frees what is dropped), yet their
number alone triggers collections that walk the whole heap, thousands of live
connections included: a quarter of a large refresh's CPU went there. The
pause covers synchronous code only, so nothing else runs meanwhile.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block with the cyclic GC off; restore its previous state after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
