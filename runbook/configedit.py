"""Careful edits of redis.conf: only the drifted directives, in place, atomically.

Comments and order are kept; a commented default (`# appendfsync everysec`) is replaced
where it stands; duplicates of a changed directive are removed (the server keeps the last);
the file keeps its owner, mode and line endings.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from .configfile import mask_secrets, split_args

_COMMENTED = re.compile(r"^\s*#\s*([A-Za-z][\w-]*)\s+(.*)$")
_SAFE_WORD = re.compile(r'^[^\s"\'\\]+$')


def quote(value: str) -> str:
    """A value as the config file needs it: bare when safe, else in double quotes."""
    if value and _SAFE_WORD.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def directive_lines(name: str, value: str, single_save_rule: bool) -> list[str]:
    """The lines that set `name` to `value` (one `save` line per rule for servers before 7.0)."""
    if name == "save":
        nums = value.split()
        if not nums:
            return ['save ""']
        if single_save_rule:
            return [f"save {a} {b}" for a, b in zip(nums[::2], nums[1::2])]
        return ["save " + " ".join(nums)]
    return [f"{name} {quote(value)}"]


def _active_name(line: str) -> str | None:
    s = line.strip()
    if not s or s.startswith("#"):
        return None
    try:
        args = split_args(s)
    except ValueError:
        return None
    return args[0].lower() if args else None


def _commented(line: str, name: str) -> str | None:
    """The value of a commented-out `# name value` line, else None (prose and placeholders are not)."""
    m = _COMMENTED.match(line)
    if not m or m.group(1).lower() != name or "<" in m.group(2):
        return None
    return m.group(2).strip()


def edit_text(text: str, changes: Mapping[str, str], *, single_save_rule: bool = False,
              stamp: str = "") -> str:
    """`text` with each setting of `changes` set to its value, touching nothing else."""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines()
    trailing = text.endswith(("\n", "\r"))
    appended: list[str] = []
    for name, value in changes.items():
        new = directive_lines(name, value, single_save_rule)
        active = [i for i, ln in enumerate(lines) if _active_name(ln) == name]
        if active:
            # One occurrence takes the new value (the last, which wins; for save the first, where
            # the rules start); the duplicates go.
            keep = active[-1] if name != "save" else active[0]
            for i in reversed(active):
                if i != keep:
                    del lines[i]
                    keep -= 1 if i < keep else 0
            lines[keep : keep + 1] = new
            continue
        commented = [(i, v) for i, ln in enumerate(lines) if (v := _commented(ln, name)) is not None]
        if commented:
            exact = [i for i, v in commented if " ".join(v.split()) == " ".join(value.split())]
            at = exact[0] if exact else commented[-1][0]
            if exact:
                lines[at : at + 1] = new
            else:
                lines[at + 1 : at + 1] = new
            continue
        appended.extend(new)
    if appended:
        header = "# Persistence settings written by the Redis persistence runbook" + (f" ({stamp})" if stamp else "")
        lines += ["", header, *appended]
        trailing = True
    return newline.join(lines) + (newline if trailing else "")


def unified_diff(before: str, after: str, path: str, context: int = 2) -> str:
    """A unified diff of two versions of a config file, with every secret masked."""
    diff = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                fromfile=f"{path} (now)", tofile=f"{path} (after)", n=context)
    return mask_secrets("".join(diff))


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def backup(path: Path, stamp: str) -> Path:
    """Copy `path` to `<path>.runbook-<stamp>.bak` beside it, with the same owner and mode."""
    dest = path.with_name(f"{path.name}.runbook-{stamp}.bak")
    shutil.copy2(path, dest)
    st = path.stat()
    try:
        os.chown(dest, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # not root: the copy is ours, with the same mode
    return dest


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` by `text` atomically (temp file in the same dir, fsync, rename), keeping owner and mode."""
    st = path.stat()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
