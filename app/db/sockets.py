"""What the operating system says of a database connection's socket."""

from __future__ import annotations

import select


def has_input(fileno: int) -> bool:
    """Whether the server has sent something on this connection's socket that nobody has
    read yet: one poll(2) with no wait (~1 µs), with a poll object of its own, since one
    object may not be polled by two threads at a time."""
    waiting = select.poll()
    waiting.register(fileno, select.POLLIN)
    return bool(waiting.poll(0))
