"""Claiming a run folder: exactly one run writes into a folder, whatever races it.

A run holds an exclusive lock (flock) on the folder's `.fedsim-claim` for as long as it writes there
(a new run from before it looks at the folder, a resume from before it reads it): of two runs started
at the same instant with the same --out, exactly one gets the folder and the other is told so; the
kernel drops the lock of a process that dies, so a killed run's folder is free again. A default name
(`results/<name>/<timestamp>`) that is taken gets a suffix (`-2`, `-3`, ...) instead.

A folder that holds a run which never completed a round (killed during start-up, a full disk, Ctrl-C
in round 1) is "half-made": the same command starts the run there again, after removing fedsim's
files (and only them; a folder with anything else in it is refused).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

from fedsim.results.durable import leftovers
from fedsim.results.schema import (
    ARTIFACT_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DEVICES_FILE,
    FLEET_FILE,
    MODEL_FILE,
    PARTITION_FILE,
    PROGRAM_FILE,
    RESUME_DIR,
    ROUNDS_FILE,
    STATE_DIR,
    STATE_FILE,
    RunFolderError,
)

CLAIM_FILE = ".fedsim-claim"
FILES = (
    CONFIG_FILE,
    MODEL_FILE,
    PROGRAM_FILE,
    ARTIFACT_FILE,
    PARTITION_FILE,
    FLEET_FILE,
    CHECKPOINT_FILE,
    STATE_FILE,
    CLAIM_FILE,
)
FOLDERS = (RESUME_DIR, ROUNDS_FILE, DEVICES_FILE, STATE_DIR)

_CREATED: set[Path] = set()  # run folders this process made (a failed start may remove them again)
_HELD: dict[Path, int] = {}  # the claims this process holds: folder -> the locked descriptor


def default_out(name: str, root: str | os.PathLike[str] = "results") -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / name / stamp


def created_folders() -> list[Path]:
    """The run folders this process has made, oldest name first."""
    return sorted(_CREATED)


def claim_run_folder(out: str | os.PathLike[str], free_name: bool = False) -> Path:
    """Create or take `out` for a new run and claim it; RunFolderError if it holds a run (or anything
    else) or another process claimed it first. `free_name`: a taken name gets a suffix instead."""
    path = Path(out)
    for n in range(1, 1000):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            return _claim(candidate)
        except RunFolderError:
            if not free_name:
                raise
    raise RunFolderError(f"--out {path}: 999 folders of that name are taken")


def _claim(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"--out {path}: cannot create the folder ({e.strerror or e})") from None
    try:
        path.mkdir()
        _CREATED.add(path.resolve())
    except FileExistsError:
        if not path.is_dir():
            raise RunFolderError(f"--out {path} is a file, not a folder; pick another folder") from None
    except OSError as e:
        raise RunFolderError(f"--out {path}: cannot create the folder ({e.strerror or e})") from None
    had_claim = (path / CLAIM_FILE).exists()
    take_claim(path)  # from here on no other process can start or continue a run in `path`
    try:
        restart_half_made(path)
    except BaseException:
        if not had_claim:  # a folder refused is left as it was found
            (path / CLAIM_FILE).unlink(missing_ok=True)
        release_claim(path)
        raise
    return path


def take_claim(path: Path) -> None:
    """Hold the folder's claim: an exclusive lock (flock) on `.fedsim-claim`, kept until
    release_claim or this process ends (the kernel drops the lock of a process that dies, so a
    killed run's folder is free again). RunFolderError if a live process holds it."""
    claim = path / CLAIM_FILE
    for _ in range(100):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            raise RunFolderError(f"--out {path}: cannot write in it ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = _owner(claim)
            who = f" (pid {owner})" if owner is not None else ""
            raise RunFolderError(f"{path}: another fedsim process{who} is running in this folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(claim).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the file was replaced while we waited: lock the one that is there now
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid()}).encode())
        os.fsync(fd)
        _HELD[path.resolve()] = fd
        return
    raise RunFolderError(f"{path}: its claim file keeps changing; is another process removing it?")


def release_claim(path: Path) -> None:
    """Let go of a folder this process claimed (the file stays; its lock is what counts)."""
    fd = _HELD.pop(path.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the lock


def _owner(claim: Path) -> int | None:
    try:
        return int(json.loads(claim.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def restart_half_made(path: Path) -> None:
    """Empty a folder (this process holds its claim) whose run never completed a round, so a new run
    can start there; refuse a folder that holds a completed round or files fedsim did not write."""
    entries = [p for p in path.iterdir() if p.name != CLAIM_FILE]
    if not entries:
        return
    ours = set(FILES) | set(FOLDERS) | {p.name for p in leftovers(path)}
    strangers = [p.name for p in entries if p.name not in ours]
    meta = _read_meta(path)
    parts = path / ROUNDS_FILE
    done = int(meta.get("rounds_completed") or 0) if meta else int(parts.is_dir() and any(parts.iterdir()))
    if strangers or done:
        raise RunFolderError(
            f"--out {path} already exists and is not empty; fedsim never overwrites a run, pick another folder"
        )
    status = meta.get("status", "started") if meta else "started"
    print(
        f"fedsim: {path} held a run that never completed a round ({status}); starting over in it",
        file=sys.stderr,
        flush=True,
    )
    remove_run_files(path)


def remove_run_files(path: Path) -> None:
    """Remove fedsim's files from a run folder (a run that never completed a round); others stay,
    and so does the claim file (its lock, not its presence, says whether the folder is taken)."""
    for name in FILES:
        if name != CLAIM_FILE:
            (path / name).unlink(missing_ok=True)
    for f in leftovers(path):
        f.unlink(missing_ok=True)
    for name in FOLDERS:
        shutil.rmtree(path / name, ignore_errors=True)


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None
