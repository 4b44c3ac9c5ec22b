"""structlog, configured once: console on a TTY, JSON otherwise, context vars merged in, and
the trace and fields of the request or record being handled (`shared.tracing.traced`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Literal

import structlog

from shared.events import current_traceparent, trace_id

# The fields of the request or record being handled (see `shared.tracing.traced`).
log_fields: ContextVar[Mapping[str, Any]] = ContextVar("log_fields", default=MappingProxyType({}))


def add_log_context(
    _: object, __: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A processor: the `trace_id` and fields of the request or record being handled, read
    when a line is logged (the line's own keys win)."""
    traceparent = current_traceparent.get()
    if traceparent is not None:
        event_dict.setdefault("trace_id", trace_id(traceparent))
    for name, value in log_fields.get().items():
        event_dict.setdefault(name, value)
    return event_dict


# What every line gets from the context it is logged in (tests capture logs through these too).
CONTEXT_PROCESSORS: tuple[structlog.typing.Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    add_log_context,
)


def configure_logging(
    level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *CONTEXT_PROCESSORS,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
