"""Careful edits of redis.conf: only the drifted directives, in place, atomically.

Comments and order are kept; a commented default (`# appendfsync everysec`) is replaced
where it stands; duplicates of a changed directive are removed (the server keeps the last);
the file keeps its owner, mode and line endings.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from runbook.server.configfile import mask_secrets, split_args

_COMMENTED = re.compile(r"^\s*#\s*([A-Za-z][\w-]*)\s+(.*)$")
_SAFE_WORD = re.compile(r'^[^\s"\'\\]+$')


def quote(value: str) -> str:
    """A value as the config file needs it: bare when safe, else in double quotes."""
    if value and _SAFE_WORD.fullmatch(value):
        return value
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\r", "\\r"))
    return '"' + escaped + '"'


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


def _split_lines(text: str) -> tuple[list[str], list[str]]:
    """Lines and their own endings, split on \\n only (as the server reads the file)."""
    contents, endings = [], []
    for raw in text.split("\n"):
        if raw.endswith("\r"):
            contents.append(raw[:-1])
            endings.append("\r\n")
        else:
            contents.append(raw)
            endings.append("\n")
    # split() leaves a last piece after the final \\n: "" when the file ends with a newline.
    endings[-1] = ""
    if contents[-1] == "" and len(contents) > 1:
        contents.pop()
        endings.pop()
    return contents, endings


def edit_text(text: str, changes: Mapping[str, str], *, single_save_rule: bool = False,
              stamp: str = "") -> str:
    """`text` with each setting of `changes` set to its value, touching nothing else.

    Every other line keeps its bytes and its own line ending; new lines take the ending of
    the line they replace (or the file's most common one when added).
    """
    lines, endings = _split_lines(text)
    common = "\r\n" if endings.count("\r\n") > endings.count("\n") else "\n"
    unterminated = bool(endings) and not endings[-1]
    if unterminated:
        endings[-1] = common
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
                    del lines[i], endings[i]
                    keep -= 1 if i < keep else 0
            at, count = keep, 1
        else:
            commented = [(i, v) for i, ln in enumerate(lines) if (v := _commented(ln, name)) is not None]
            if not commented:
                appended.extend(new)
                continue
            exact = [i for i, v in commented if " ".join(v.split()) == " ".join(value.split())]
            # Replace a commented default of the same value where it stands, else add below the last one.
            at, count = (exact[0], 1) if exact else (commented[-1][0] + 1, 0)
        ending = endings[at] if count else endings[at - 1]
        lines[at : at + count] = new
        endings[at : at + count] = [ending] * len(new)
    if appended:
        header = "# Persistence settings written by the Redis persistence runbook" + (f" ({stamp})" if stamp else "")
        block = ["", header, *appended]
        lines += block
        endings += [common] * len(block)
    elif unterminated:
        endings[-1] = ""
    return "".join(ln + end for ln, end in zip(lines, endings))


def read_raw(path: Path) -> str:
    """A config file's text exactly as stored (CRLF kept; undecodable bytes kept as surrogates)."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape")


def sha256_text(text: str) -> str:
    """The sha256 of a config file's text as `read_raw` returns it (its bytes on disk)."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()


def unified_diff(before: str, after: str, path: str, context: int = 2) -> str:
    """A unified diff of two versions of a config file, with every secret masked."""
    diff = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                fromfile=f"{path} (now)", tofile=f"{path} (after)", n=context)
    # A last line without a newline gets one, and patch's marker that it had none.
    out = [ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n" for ln in diff]
    return mask_secrets("".join(out))


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def backup_path(path: Path, stamp: str, change_id: str = "") -> Path:
    """Where `backup` copies `path` (the real file's name and directory, a symlink followed)."""
    real = path.resolve()
    return real.with_name(f"{real.name}.runbook-{change_id or 'manual'}-{stamp}.bak")


def backup(path: Path, stamp: str, change_id: str = "") -> tuple[Path, str]:
    """Copy `path` to `<path>.runbook-<change id>-<stamp>.bak` beside it, with the same owner and mode; returns
    the copy and the sha256 of the bytes copied.

    Never over an existing file (O_EXCL: FileExistsError, and nothing is written). A symlink is followed: the
    copy is of the real file, beside the real file. Without a change id (a notebook run by hand) the name says
    `manual`.
    """
    path = path.resolve()
    dest = backup_path(path, stamp, change_id)
    st = path.stat()
    data = path.read_bytes()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        shutil.copystat(path, dest)  # mode and times
        try:
            os.chown(dest, st.st_uid, st.st_gid)
        except PermissionError:
            pass  # not root: the copy is ours, with the same mode
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest, hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` by `text` atomically (temp file in the same dir, fsync, rename), keeping owner and mode.

    A symlink is written through: the real file is replaced and the link stays a link.
    """
    path = path.resolve()
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
