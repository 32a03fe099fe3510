"""One writer at a time: long commands (`simulate`, `photometry`, `rcnn train`) hold an advisory lock on
their output, so that a second copy started by mistake (the first looked dead) stops at once with a clear
message instead of interleaving its writes with the first's. POSIX `flock`; where there is none (other
systems, file systems mounted without it) no lock is taken and the command runs as it did before."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


_HELD: list = []  # the lock files this process holds open (`forget_locks`)


def forget_locks() -> None:
    """In a forked child: close its copies of the parent's lock files. A flock belongs to the open file, which
    fork shares: a child left running after its parent died would keep the output locked."""
    for fh in _HELD:
        fh.close()
    _HELD.clear()


class LockedError(OSError):
    """Another process holds the lock; the message names the output."""


@contextmanager
def exclusive(lock_file: str | Path, what: str, remove: bool = False):
    """Hold an exclusive advisory lock on `lock_file` for the body (created empty if missing); `what` names the
    output in another process's error. `remove`: delete the file when done (a sidecar next to a user's file).
    Never an HDF5 file itself: HDF5 takes its own flock on every open and would refuse us, or readers."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    lock_file = Path(lock_file)
    with open(lock_file, "ab") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{what} is being written by another process (it holds a lock on {lock_file}); "
                              f"wait for it to finish, or stop it first") from None
        except OSError:  # a file system without flock (some NFS and Lustre mounts): go on unguarded
            pass
        _HELD.append(fh)
        try:
            yield
        finally:
            _HELD.remove(fh)
            if remove:
                lock_file.unlink(missing_ok=True)
