"""Where the service's own log lines go.

uvicorn configures its own loggers only. Without a handler of its own, a `rapport` record
fell through to Python's last-resort handler, which prints WARNING and above: the INFO
lines operators are told to read ("form typeform-visits: a delivery was refused: …",
openapi.md) were never printed."""

from __future__ import annotations

import logging

FORMAT = "%(levelname)s:     %(name)s: %(message)s"  # beside uvicorn's "INFO:     …" lines


def log_to_stderr() -> None:
    """Print the `rapport` loggers' INFO and above on stderr, unless logging is already
    set up to take them (a handler on them or on the root: an operator's configuration,
    or a test's capture)."""
    logger = logging.getLogger("rapport")
    logger.setLevel(logging.INFO)
    if not logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
