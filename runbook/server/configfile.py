"""Read redis.conf the way the server does: quoting, `include`, last one wins.

See https://redis.io/docs/latest/operate/oss_and_stack/management/config-file/
"""

from __future__ import annotations

import glob
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from runbook.errors import PreconditionFailed

log = logging.getLogger(__name__)

#: Directives whose arguments are secrets; they never reach evidence.
SECRET_DIRECTIVES = frozenset(
    {"requirepass", "masterauth", "masteruser", "primaryauth", "primaryuser",  # Valkey's names
     "tls-key-file-pass", "tls-client-key-file-pass"}
)
MASK = "********"


@dataclass(frozen=True)
class Directive:
    """One directive line: its lower-cased name, arguments and where it stands."""

    name: str
    args: tuple[str, ...]
    file: Path
    lineno: int


@dataclass(frozen=True)
class ConfigFile:
    """A parsed config file with its includes, in the order the server reads them."""

    path: Path
    directives: tuple[Directive, ...]
    files: tuple[Path, ...]

    def last(self, name: str) -> Directive | None:
        """The directive that wins for `name` (the server keeps the last one)."""
        found = [d for d in self.directives if d.name == name]
        return found[-1] if found else None

    def value(self, name: str, *, single_save_rule: bool = False) -> str | None:
        """The effective value of `name` as one string, or None when the file does not set it.

        `save` lines accumulate (each adds a rule; `save ""` clears them), as in the server.
        Servers before 7.0 take one rule per `save` line and silently ignore a line with more
        (`single_save_rule=True` reads the file as they do).
        """
        if name == "save":
            rules: list[str] = []
            seen = False
            for d in self.directives:
                if d.name != "save":
                    continue
                seen = True
                if d.args in ((), ("",)):
                    rules = []
                elif single_save_rule and len(d.args) != 2:
                    continue
                else:
                    rules.extend(d.args)
            return " ".join(rules) if seen else None
        d = self.last(name)
        return " ".join(d.args) if d else None


def split_args(line: str) -> list[str]:
    """Split a config line exactly like the server's sdssplitargs.

    "double quotes" take escapes (\\n, \\xHH, ...), 'single quotes' only \\'; a quote may open
    in the middle of a word (foo"bar baz" is one argument), and a closing quote must be
    followed by a space or the end of the line.
    """
    args: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            return args
        cur: list[str] = []
        inq = insq = False
        while True:
            c = line[i] if i < n else ""
            if inq:
                if not c:
                    raise ValueError("unbalanced double quotes")
                if c == "\\" and i + 3 < n and line[i + 1] == "x" \
                        and re.fullmatch(r"[0-9a-fA-F]{2}", line[i + 2 : i + 4]):
                    cur.append(chr(int(line[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                if c == "\\" and i + 1 < n:
                    cur.append({"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a"}.get(line[i + 1], line[i + 1]))
                    i += 2
                    continue
                if c == '"':
                    if i + 1 < n and not line[i + 1].isspace():
                        raise ValueError("closing quote must be followed by a space")
                    i += 1
                    break
                cur.append(c)
            elif insq:
                if not c:
                    raise ValueError("unbalanced single quotes")
                if c == "\\" and i + 1 < n and line[i + 1] == "'":
                    cur.append("'")
                    i += 2
                    continue
                if c == "'":
                    if i + 1 < n and not line[i + 1].isspace():
                        raise ValueError("closing quote must be followed by a space")
                    i += 1
                    break
                cur.append(c)
            else:
                if not c or c.isspace():
                    break
                if c == '"':
                    inq = True
                elif c == "'":
                    insq = True
                else:
                    cur.append(c)
            i += 1
        args.append("".join(cur))


def parse_text(text: str, path: Path) -> list[tuple[int, list[str]]]:
    """The (line number, arguments) of every directive in `text`; comments and blanks skipped."""
    out: list[tuple[int, list[str]]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            args = split_args(line)
        except ValueError as err:
            raise PreconditionFailed(
                f"{path}:{lineno}: cannot parse {mask_secrets(raw.strip())!r} ({err}); the server would refuse "
                "it too. Fix the line, then run again."
            ) from err
        if args:
            out.append((lineno, args))
    return out


def read_config(path: str | Path, _seen: tuple[Path, ...] = (), _cwd: Path | None = None) -> ConfigFile:
    """Parse `path` and every file it includes (globs allowed; relative ones as the server resolves them)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError as err:
        raise PreconditionFailed(
            f"config file {path} does not exist. Pass config_file with the file the server was started with "
            "(INFO server reports it as config_file)."
        ) from err
    except PermissionError as err:
        raise PreconditionFailed(
            f"config file {path} is not readable by this user. Run as a user that can read it "
            "(for example the redis group), or copy it somewhere readable and pass config_file."
        ) from err
    resolved = path.resolve()
    if resolved in _seen:
        raise PreconditionFailed(f"config file {path} includes itself (through {', '.join(map(str, _seen))}).")
    directives: list[Directive] = []
    files: list[Path] = [path]
    # The server opens a relative include from its working directory, which a `dir` line
    # before it moves; the directory it was started in is unknown here, so we start from the
    # config file's own directory.
    cwd = _cwd if _cwd is not None else path.parent
    for lineno, args in parse_text(text, path):
        name = args[0].lower()
        if name == "dir" and len(args) >= 2:
            cwd = cwd / args[1]
        if name == "include" and len(args) >= 2:
            pattern = str(cwd / args[1])
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            for inc in matches:
                sub = read_config(inc, _seen + (resolved,), cwd)
                directives.extend(sub.directives)
                files.extend(sub.files)
            continue
        directives.append(Directive(name, tuple(args[1:]), path, lineno))
    return ConfigFile(path=path, directives=tuple(directives), files=tuple(files))


_SECRET_LINE = re.compile(r"^(\s*)(\S+)(\s+)(.*)$")


def mask_secrets(text: str) -> str:
    """`text` (a config file, a diff of one, or a server log) with every password replaced by a mask."""
    out: list[str] = []
    for raw in text.splitlines(keepends=True):
        body = raw.rstrip("\r\n")
        ending = raw[len(body) :]
        prefix = ""
        if ">>> '" in body:  # a server log echoing the config line it refused
            cut = body.index(">>> '") + 5
            prefix, body = body[:cut], body[cut:]
        elif body[:1] in "+- " and body[1:2] not in ("", "+", "-") and not body.startswith(("+++", "---")):
            prefix, body = body[:1], body[1:]
        out.append(prefix + _mask_line(body) + ending)
    return "".join(out)


def _mask_line(body: str) -> str:
    stripped = body.lstrip()
    if not stripped or stripped.startswith("#"):
        return body
    try:
        args = split_args(stripped.rstrip("'"))
    except ValueError:
        args = stripped.split()
    if not args:
        return body
    name = args[0].lower()
    indent = body[: len(body) - len(stripped)]
    if name in SECRET_DIRECTIVES:
        return f"{indent}{args[0]} {MASK}"
    if name == "user":
        masked = [a[0] + MASK if a[:1] in (">", "<", "#", "!") and len(a) > 1 else a for a in args[1:]]
        return f"{indent}{args[0]} " + " ".join(masked)
    return body
