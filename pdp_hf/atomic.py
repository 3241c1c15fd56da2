"""Every file pdp_hf writes in place goes through `atomic_write`: a temporary file in the same folder, flushed and
fsync'ed, then `os.replace`d over the destination. A write that dies midway leaves the previous file whole, never a
truncated one. Folders (exports) are written to a staging folder and swapped in whole by `replace_folder`.

Example:

```python
>>> import os, tempfile
>>> from pdp_hf.atomic import atomic_write
>>> path = os.path.join(tempfile.mkdtemp(), "note.txt")
>>> atomic_write(path, lambda tmp: open(tmp, "w").write("kept whole"))
>>> open(path).read()
'kept whole'

```
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call `write(temporary_path)`, make the bytes durable, and move them to `path` in one step."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable where the OS allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


OLD_SUFFIX = ".pdp-old"  # where a folder being replaced waits, when the OS cannot exchange two folders atomically


def exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`); False where the OS or filesystem lacks it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), b)


def replace_folder(staging: str, destination: str) -> None:
    """Put the finished folder `staging` at `destination`. An existing destination stays loadable at its path until
    the new one is in place: exchanged atomically where the OS can, else moved aside to `<destination>.pdp-old`
    first, a state `recover_folder` (called by the next export or load) completes."""
    if not os.path.isdir(destination):
        os.rename(staging, destination)
    elif exchange(staging, destination):
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the previous folder
    else:
        aside = destination + OLD_SUFFIX
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(destination, aside)
        os.rename(staging, destination)
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_folder(os.path.dirname(os.path.abspath(destination)))


def recover_folder(destination: str) -> None:
    """Complete a replacement that was interrupted: the previous folder back at its path if the new one never
    arrived, else the leftover removed."""
    aside = os.fspath(destination) + OLD_SUFFIX
    if not os.path.isdir(aside):
        return
    if os.path.isdir(destination):
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(aside, destination)
