"""``gc_paused()``: no cyclic garbage collection inside a block.

For code that builds many objects that all live until the block ends (an
upload's parsed batch, a fan-out loop over a thousand sockets): left on, the
collector walks them again and again while they are built.  Reference
counting still frees what dies; cyclic garbage made meanwhile is collected
once the collector is back on.  The switch is process-wide, so other work
(other requests included) runs without it for as long as the block lasts.
Stdlib only; safe from any thread, though the pause then covers them all.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """The collector off inside the block, and afterwards as it was found
    (a block nested in another, or run while it was off already, leaves it off)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
