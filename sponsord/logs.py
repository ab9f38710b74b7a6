"""Logging: structlog, JSON lines for journald, readable on a terminal.

Secrets never reach a log line: they live in :class:`~sponsord.config.Secret`,
whose repr is masked, and no code logs a supporter's name (only counts).
"""

from __future__ import annotations

import logging
import sys

import structlog


def setup_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger (aiohttp logs through it).

    json: force JSON lines (True) or console output (False); by default JSON
        unless stdout is a terminal.
    """
    if json is None:
        json = not sys.stdout.isatty()
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # format_exc_info: aiohttp's "Error handling request" carries exc_info;
            # without it the JSON line holds a tuple's repr and loses the traceback.
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # One line per request is journald noise at thousands of pages; warnings still show.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
