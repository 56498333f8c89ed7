"""Ctrl-C that stops a run even when Python swallowed its KeyboardInterrupt.

A signal's handler runs in whatever the main thread is executing when it arrives. If that is a finalizer,
such as the weakref callback py4j runs for each collected JVM object, the handler's KeyboardInterrupt is
printed as "Exception ignored in ..." and dropped, and the run carries on to its commit. Within
`interrupts_recorded()`, the C-level signal handler also writes each signal's number to a socket
(`signal.set_wakeup_fd`), whichever Python handler is installed and whatever became of its exception; the
run calls the returned check between shards and before its commit.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def interrupts_recorded() -> Iterator[Callable[[], None]]:
    """Yield a check that raises KeyboardInterrupt once SIGINT has arrived inside the block.

    Outside the main thread (where signals are not delivered to Python) the check does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    seen = bytearray()

    def check() -> None:
        try:
            while chunk := reader.recv(256):
                seen.extend(chunk)
        except BlockingIOError:
            pass
        if signal.SIGINT in seen:
            raise KeyboardInterrupt

    try:
        yield check
    finally:
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
