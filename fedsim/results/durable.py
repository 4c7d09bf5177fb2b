"""Writing a file so that readers see the old version or the whole new one, never a part, and so
that it survives a power cut once written: write a temporary file beside it, fsync it, rename it over
the old one, fsync the folder (the rename itself is then on disk). SQLite's and parquet writers'
promise, for the run folder's files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = "."  # a file being written is `.NAME.tmp` beside NAME
TMP_SUFFIX = ".tmp"


def tmp_name(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}{TMP_SUFFIX}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the data itself is synced
        pass
    finally:
        os.close(fd)


def _publish(path: Path, write: Callable[[Path], object], sync: bool = True) -> None:
    tmp = tmp_name(path)
    try:
        write(tmp)
        if sync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill mid-write leaves no temporary file
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    _publish(path, lambda tmp: tmp.write_bytes(data))


def atomic_stream(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` fills the file through an open binary handle (no bytes object of the whole content)."""

    def stream(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    _publish(path, stream)


def atomic_parquet(path: Path, frame: pd.DataFrame) -> None:
    _publish(path, lambda tmp: frame.to_parquet(tmp, index=False))


def atomic_arrow(path: Path, table: pa.Table) -> None:
    _publish(path, lambda tmp: pq.write_table(table, tmp))


def atomic_link(source: Path, path: Path) -> None:
    """`path` becomes `source` too (a hard link, atomically); a copy where links are not possible."""
    if path.exists() and os.path.samefile(source, path):
        return  # (renaming a link over another link of the same file would do nothing and leave the link)

    def link(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)  # the data is the source's, on disk already: only the name is new
        except OSError:
            shutil.copyfile(source, tmp)
            fsync_file(tmp)

    _publish(path, link, sync=False)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files a killed write left in `folder` and its table folders."""
    if not folder.is_dir():
        return []
    found = []
    for f in [*folder.iterdir(), *(p for d in folder.iterdir() if d.is_dir() for p in d.iterdir())]:
        if f.name.startswith(TMP_PREFIX) and f.name.endswith(TMP_SUFFIX):
            found.append(f)
    return found
