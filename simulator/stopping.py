"""How the commands stop on SIGINT and SIGTERM (Ctrl-C, `kill`, a batch scheduler's time limit).

Python's defaults are a KeyboardInterrupt raised wherever the main thread is, and for SIGTERM death on the
spot (no `finally`: forked workers ran on computing shards nobody would write). An exception raised from a
signal handler is not safe either: it can land between a lock's acquisition and the `with` that releases
it (h5py's global lock: the process hangs) or in a garbage collector's callback, where Python prints it and
goes on. So within `stop_requests()` the first SIGINT or SIGTERM is only recorded, and the long loops call
`check()` after each unit of work (a shard, a batch of objects; `rcnn train` after each step), which raises
`Stopped` there, with that unit kept. The commands then say in one line what they kept and exit with the
shell's status for the signal (130, 143). A second signal stops at once: a second SIGTERM as Python's
default (death), a second SIGINT by raising `Stopped` wherever the main thread is, as Python's
KeyboardInterrupt would, so that the `finally` blocks run and the command still ends in one line and status
130 (not a traceback of every frame it was in). A signal after the last check (while a command writes its
final output) lets the command finish: its output is complete, and one line on stderr says the signal came
too late to stop it.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

class _Record(list):
    """The signals recorded by a `stop_requests`, and whether a `Stopped` has acted on them."""

    acted = False


#: The record of the active `stop_requests` (one per process: nested ones share it).
_ACTIVE: list[_Record] = []


class Stopped(KeyboardInterrupt):
    """Work stopped by a signal. A KeyboardInterrupt, so that `except Exception` does not swallow it."""

    def __init__(self, signum: int, message: str | None = None):
        self.signum = signum
        if _ACTIVE:
            _ACTIVE[-1].acted = True
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        """The shell's status for a process its signal ended (128 + the signal's number)."""
        return 128 + self.signum


class StoppedAtOnce(Stopped):
    """A second SIGINT: the work stopped wherever it was, after its `finally` blocks (`_at_once`)."""


@contextmanager
def stop_requests(enabled: bool = True):
    """Within: SIGINT and SIGTERM append their number to the yielded list instead of acting; the first one
    also puts the previous handlers back, so that a second acts as before, except that Python's default
    KeyboardInterrupt becomes `Stopped` (see the module's docstring). Inside another `stop_requests`,
    that one's list. Only in the main thread (the only one Python lets set handlers), and not for a signal
    the process inherited as ignored (a background job's SIGINT), which stays ignored as Python keeps it."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield []
        return
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    caught = _Record()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    previous = {sig: h for sig, h in previous.items() if h is not signal.SIG_IGN}

    def note(signum, frame):
        caught.append(signum)
        for sig, h in previous.items():
            signal.signal(sig, _at_once if h is signal.default_int_handler else h)

    for sig in previous:
        signal.signal(sig, note)
    _ACTIVE.append(caught)
    try:
        yield caught
        if caught and not caught.acted:  # recorded after the last check: the work is complete
            print(f"{signal.Signals(caught[0]).name} came after the last point where the work could stop: it "
                  "completed", file=sys.stderr)
    finally:
        _ACTIVE.pop()
        for sig, h in previous.items():
            signal.signal(sig, h)


def _at_once(signum, frame):
    """A second SIGINT: Python's default action (an exception wherever the main thread is), with the type and
    status of a stop, after ending this process's worker processes: they ignore SIGINT and would go on, and
    a process pool whose shutdown the exception cuts off then waits for them for ever (seen: `simulate
    --workers 2`, two Ctrl-C 20 ms apart)."""
    if "multiprocessing" in sys.modules:
        for child in sys.modules["multiprocessing"].active_children():
            child.terminate()  # SIGTERM: their action is death (`worker_signals`)
    raise StoppedAtOnce(signum, f"stopped at once by a second {signal.Signals(signum).name}")


def command(prog: str):
    """Decorator for a command's `main(argv=None)`: run from the command line (no `argv`), a Ctrl-C outside
    its `stop_requests` (while Python imports the libraries, seconds for JAX, or after the work) ends it in
    one line and status 130 instead of a traceback. An API call (`argv` given) keeps Python's exception."""
    def wrap(main):
        @functools.wraps(main)
        def run(argv=None):
            if argv is not None:
                return main(argv)
            try:
                return main()
            except KeyboardInterrupt:
                print(f"{prog}: stopped by SIGINT", file=sys.stderr)
                return 130
        return run
    return wrap


def check() -> None:
    """Raise `Stopped` if a stop signal was recorded (within `stop_requests`; a no-op outside)."""
    if _ACTIVE and _ACTIVE[-1]:
        raise Stopped(_ACTIVE[-1][0])


def worker_signals() -> None:
    """For a worker process: ignore SIGINT (Ctrl-C reaches the terminal's whole process group; the parent
    stops the work and shuts its workers down) and die of SIGTERM, instead of running the handlers a forked
    one inherits from the parent; and exit within ~0.5 s of the parent's death: a parent killed outright
    (SIGKILL, the OOM killer) cannot shut its pool down, and its workers would wait on the pool's pipe for
    good, holding its files and (forked) its output's lock, so that a rerun was refused as "being written"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
