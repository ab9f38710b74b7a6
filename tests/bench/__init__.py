"""``make bench``: sponsord's fan-out against reference servers, in one run.

Not part of ``make test`` (pytest is told not to recurse here); run it with
``make bench`` or ``python -m tests.bench``. See ``docs/benchmark.md``.
"""
