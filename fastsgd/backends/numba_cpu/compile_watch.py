"""The compile watch: the seconds Numba spends compiling, and a note at the first compile.

``Recorder`` (``fastsgd.callbacks``) starts one for every fit while numba is loaded,
keeps the time it counts out of each epoch's ``seconds`` and adds it to
``compile_seconds``.  It listens to Numba's ``numba:compile`` events, which fire only
when Numba really compiles (not when it loads a function from its disk cache).
"""
from __future__ import annotations

import threading
import time

from numba.core import event

__all__ = ["CompileWatch", "FIRST_COMPILE_NOTE", "watch_compiles"]

#: What a watch's ``note`` is called with when it sees its first compile.
FIRST_COMPILE_NOTE = "compiling numba kernels (first run only) ..."


class CompileWatch(event.Listener):
    """Adds up in ``seconds`` the time Numba spends compiling in the thread that made the
    watch, while it listens (``start`` to ``stop``); the first compile calls
    ``note(FIRST_COMPILE_NOTE)`` when ``note`` is given.  A compile inside a compile
    counts once."""

    def __init__(self, note=None):
        self.seconds = 0.0
        self.note = note
        self._thread = threading.get_ident()
        self._depth, self._t0, self._noted = 0, 0.0, False
        self._listening = False

    def start(self) -> "CompileWatch":
        """Begin listening to ``numba:compile``; returns self."""
        if not self._listening:
            event.register("numba:compile", self)
            self._listening = True
        return self

    def stop(self):
        """Stop listening."""
        if self._listening:
            event.unregister("numba:compile", self)
            self._listening = False

    def on_start(self, ev):
        if threading.get_ident() != self._thread:
            return
        if self._depth == 0:
            self._t0 = time.perf_counter()
            if self.note is not None and not self._noted:
                self.note(FIRST_COMPILE_NOTE)
                self._noted = True
        self._depth += 1

    def on_end(self, ev):
        if threading.get_ident() != self._thread or self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0


def watch_compiles(note=None) -> CompileWatch:
    """A started ``CompileWatch`` of this thread; ``note(line)``, when given, is called
    once, at the first compile."""
    return CompileWatch(note).start()
