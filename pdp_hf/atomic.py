"""Every file pdp_hf writes in place goes through `atomic_write`: a temporary file in the same folder, flushed and
fsync'ed, then `os.replace`d over the destination. A write that dies midway leaves the previous file whole, never a
truncated one. (Exports are written into a staging folder and swapped in as a whole: `pdp_hf.export`.)

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

import os
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
