"""gcpause.py: the collector is off inside the block and restored after."""

from __future__ import annotations

import gc

import pytest

from sponsord.gcpause import gc_paused


def test_paused_inside_and_restored_even_on_error() -> None:
    """Off inside; back on after, also when the block raises."""
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError, match="boom"), gc_paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_leaves_a_disabled_collector_disabled() -> None:
    """If the collector was already off, the pause does not switch it on."""
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
