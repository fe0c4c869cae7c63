"""The write commands sent to a server: what a step's summary and the change report say was sent.

A `Target`'s client sends through a connection class of its own log (`attach`), and every client made
from it copies that class (the waits' bounded clients, the put-back connection, the latency probe, the
lock's renewer), so every command of the target goes past the log. The log keeps the write commands,
one line each: secrets masked (a password never appears), data writes folded to their key pattern
without values (`SET runbook:canary:* x1000`), long arguments shortened. Read-only commands (INFO,
CONFIG GET, PING, GET, ...) and the connection's own handshake (AUTH, HELLO, CLIENT SETINFO, SELECT)
are left out. A line means the command was sent (a retried send counts again); not that it succeeded.

Each line is tagged with the step's run id ($RUNBOOK_RUN_ID, set by the runner in the kernel) and, when
$RUNBOOK_COMMAND_LOG names a file (the runner sets it for a run), also appended there: the runner reads
back what a step sent even when its notebook raised before it recorded its summary, and what the runner
sent itself (the server lock: run id "").
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import redis

from runbook.server.configfile import MASK, SECRET_DIRECTIVES

#: The file every command log of a run appends its lines to (set by the runner for its process and the kernel).
COMMAND_LOG_ENV = "RUNBOOK_COMMAND_LOG"
#: The step a line belongs to: the run id the runner sets in the kernel for each step (`runbook.evidence.journal`).
RUN_ID_ENV = "RUNBOOK_RUN_ID"
#: The facts key of a step's summary that lists the write commands it sent (`runbook.evidence.summary.record`).
COMMANDS_SENT = "commands_sent"

#: Commands that change nothing on the server (or only the connection's own state): never listed.
READ_ONLY = frozenset({
    "AUTH", "HELLO", "SELECT", "PING", "ECHO", "QUIT", "RESET", "READONLY", "READWRITE", "ASKING",
    "INFO", "DBSIZE", "TIME", "LASTSAVE", "ROLE", "WAIT", "WAITAOF", "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH",
    "GET", "MGET", "EXISTS", "TYPE", "TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME", "STRLEN", "GETRANGE", "LLEN",
    "LRANGE", "LINDEX", "HGET", "HMGET", "HGETALL", "HLEN", "HEXISTS", "HKEYS", "HVALS", "SCARD", "SMEMBERS",
    "SISMEMBER", "ZCARD", "ZRANGE", "ZSCORE", "XLEN", "XRANGE", "XINFO", "SCAN", "HSCAN", "SSCAN", "ZSCAN", "KEYS",
    "RANDOMKEY", "DUMP", "LOLWUT", "COMMAND", "OBJECT", "MEMORY", "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE",
    "PUNSUBSCRIBE",
})
#: Of commands with subcommands: the subcommands that change nothing (every other one is listed).
READ_ONLY_SUB = {
    "CONFIG": frozenset({"GET", "HELP"}),
    "ACL": frozenset({"DRYRUN", "WHOAMI", "GETUSER", "LIST", "USERS", "CAT", "LOG", "GENPASS", "HELP"}),
    "CLUSTER": frozenset({"INFO", "SLOTS", "SHARDS", "NODES", "MYID", "MYSHARDID", "KEYSLOT", "COUNTKEYSINSLOT",
                          "GETKEYSINSLOT", "LINKS", "REPLICAS", "SLAVES", "HELP"}),
    "SCRIPT": frozenset({"EXISTS", "HELP"}),
    "FUNCTION": frozenset({"LIST", "DUMP", "STATS", "HELP"}),
    "LATENCY": frozenset({"LATEST", "HISTORY", "DOCTOR", "GRAPH", "HISTOGRAM", "HELP"}),
    "SLOWLOG": frozenset({"GET", "LEN", "HELP"}),
    "MODULE": frozenset({"LIST", "HELP"}),
}
#: CLIENT subcommands that act on other clients (every other one sets up this connection: not listed).
CLIENT_WRITES = frozenset({"KILL", "PAUSE", "UNPAUSE"})
#: Data writes: listed by command and key pattern, never with their values. The keys of each are its first argument,
#: except for the multi-key commands below.
DATA_WRITES = frozenset({
    "SET", "SETEX", "PSETEX", "SETNX", "GETSET", "GETDEL", "GETEX", "APPEND", "SETRANGE", "INCR", "INCRBY",
    "INCRBYFLOAT", "DECR", "DECRBY", "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "PERSIST", "RPUSH", "LPUSH",
    "RPUSHX", "LPUSHX", "LPOP", "RPOP", "LSET", "LREM", "LTRIM", "LINSERT", "HSET", "HSETNX", "HMSET", "HDEL",
    "HINCRBY", "SADD", "SREM", "SPOP", "ZADD", "ZREM", "ZINCRBY", "XADD", "XDEL", "XTRIM", "RESTORE", "RENAME",
    "RENAMENX", "COPY", "MOVE", "PFADD",
})
MULTI_KEY = frozenset({"DEL", "UNLINK", "TOUCH"})  # every argument is a key
KEY_VALUE_PAIRS = frozenset({"MSET", "MSETNX"})  # key value key value ...
#: Longer arguments are shortened in a line (a script, a holder's JSON): their start and their length.
LONGEST_ARG = 64
#: A script's arguments after its keys (a lock's token and holder) are shortened further.
SCRIPT_ARG = 16


_DIGIT = re.compile(r"\d")
_STARS = re.compile(r"\*(?::\*)+")
_PLAIN = re.compile(r'[^\s"\'\\]+')


def _text(arg: Any) -> str:
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg).decode("utf-8", errors="replace")
    return str(arg)


def _quoted(arg: str) -> str:
    """`arg` as redis-cli takes it: bare when it is one plain word, else in double quotes."""
    if _PLAIN.fullmatch(arg) and arg.isprintable():
        return arg
    return json.dumps(arg, ensure_ascii=False)


def _short(arg: str, longest: int = LONGEST_ARG) -> str:
    return arg if len(arg) <= longest else f"{arg[:min(24, longest // 2)]}...({len(arg)} bytes)"


def key_pattern(key: str) -> str:
    """The key with each `:`-separated part that holds a digit as `*`, runs of `*` folded into one:
    runbook:canary:20261201T233326:{23d684fc}:17 -> runbook:canary:*."""
    return _STARS.sub("*", ":".join("*" if _DIGIT.search(part) else part for part in key.split(":")))


def _script(source: str) -> str:
    """A Lua script as a line shows it: its first line when that is a `--` comment (its name), else its sha1."""
    first = source.lstrip().split("\n", 1)[0]
    if first.startswith("--"):
        return f"<lua: {first[2:].strip()}>"
    return f"<lua sha1 {hashlib.sha1(source.encode()).hexdigest()[:12]}>"


def describe(command: Sequence[Any], password: str | None = None, config_command: str = "CONFIG"
             ) -> tuple[str, int] | None:
    """One command as the log keeps it: (line, how many keys or calls it stands for), None for a read-only one.

    `password`: the connection's own, masked wherever it appears as an argument; `config_command`: the CONFIG
    command's name on this server (rename-command), read as CONFIG."""
    if not command:
        return None
    head = _text(command[0]).split()  # redis-py sends some as one word: "CONFIG SET"
    rest = list(command[1:])
    name = head[0].upper() if head else ""
    name = "CONFIG" if name == config_command.upper() else name
    sub = head[1] if len(head) > 1 else _text(rest[0]) if rest else ""
    sub = sub.upper()
    if name in READ_ONLY or sub in READ_ONLY_SUB.get(name, ()) or (name in READ_ONLY_SUB and not sub) \
            or (name == "CLIENT" and sub not in CLIENT_WRITES):
        return None  # decided on the first two words: a read-only pipeline costs no decoding
    if name in DATA_WRITES and len(head) == 1 and rest:  # only the key is read: values are never decoded
        return f"{name} {_quoted(key_pattern(_text(rest[0])))}", 1
    words = [*head, *(_text(a) for a in rest)]
    if name in MULTI_KEY or name in KEY_VALUE_PAIRS:
        keys = words[1:] if name in MULTI_KEY else words[1::2]
        if not keys:
            return name, 1
        patterns = list(dict.fromkeys(key_pattern(k) for k in keys))
        return f"{name} {' '.join(map(_quoted, patterns))}", len(keys)
    args = _masked(name, words[1:], password)
    if name in ("EVAL", "EVAL_RO") and args:
        numkeys = int(args[1]) if len(args) > 1 and args[1].isdigit() else 0
        keys, rest = args[1:2 + numkeys], args[2 + numkeys:]
        return " ".join([words[0], _script(words[1]), *map(_quoted, keys),
                         *(_quoted(_short(a, SCRIPT_ARG)) for a in rest)]), 1
    return " ".join([words[0], *(a if a == MASK else _quoted(_short(a)) for a in args)]), 1


def _masked(name: str, args: list[str], password: str | None) -> list[str]:
    """`args` with every secret replaced by the mask: a password of this connection anywhere, the values of the
    secret directives (CONFIG SET requirepass ...), ACL rules that set passwords, MIGRATE's AUTH and AUTH2."""
    out = [MASK if password and a == password else a for a in args]
    upper = [a.upper() for a in args]
    if name == "CONFIG" and upper[:1] == ["SET"]:
        for i in range(1, len(out) - 1, 2):
            if args[i].lower() in SECRET_DIRECTIVES:
                out[i + 1] = MASK
    elif name == "ACL" and upper[:1] == ["SETUSER"]:
        out = [MASK if a[:1] in (">", "<", "#", "!") else a for a in out]
    elif name == "MIGRATE":
        for i, word in enumerate(upper):
            if word == "AUTH" and i + 1 < len(out):
                out[i + 1] = MASK
            elif word == "AUTH2" and i + 2 < len(out):
                out[i + 1] = out[i + 2] = MASK
    return out


def fold(lines: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Consecutive equal lines as one, their counts added."""
    out: list[tuple[str, int]] = []
    for line, n in lines:
        if out and out[-1][0] == line:
            out[-1] = (line, out[-1][1] + n)
        else:
            out.append((line, n))
    return out


def shown(line: str, n: int) -> str:
    return f"{line} x{n}" if n > 1 else line


@dataclass
class _Entry:
    seq: int
    run_id: str
    line: str
    n: int


_SEQ = itertools.count()
#: Every live log of this process (a step's summary gathers the lines of all of them).
_LOGS: weakref.WeakSet[CommandLog] = weakref.WeakSet()
_FILE_LOCK = threading.Lock()


class CommandLog:
    """The write commands sent to the server named `server`, in order, folded (see the module)."""

    def __init__(self, server: str, config_command: str = "CONFIG") -> None:
        self.server = server
        self.config_command = config_command
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()
        _LOGS.add(self)

    def note(self, commands: Iterable[Sequence[Any]], password: str | None = None) -> None:
        """Keep the write commands among `commands` (one send: a command, or a pipeline's)."""
        described = [d for c in commands if (d := describe(c, password, self.config_command)) is not None]
        if not described:
            return
        run_id = os.environ.get(RUN_ID_ENV, "")
        lines = fold(described)
        with self._lock:
            for line, n in lines:
                last = self._entries[-1] if self._entries else None
                if last is not None and last.run_id == run_id and last.line == line:
                    last.n += n
                else:
                    self._entries.append(_Entry(next(_SEQ), run_id, line, n))
        sink = os.environ.get(COMMAND_LOG_ENV, "")
        if sink:
            _append(Path(sink), [{"run_id": run_id, "server": self.server, "line": line, "n": n} for line, n in lines])

    def lines(self, run_id: str | None = None) -> list[str]:
        """What was sent (of the step `run_id` only, when given), one line each."""
        with self._lock:
            return [shown(line, n) for line, n in fold((e.line, e.n) for e in self._entries
                                                        if run_id is None or e.run_id == run_id)]


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append `rows` to the run's command file in one write (the runner and the kernel both append to it)."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    try:
        with _FILE_LOCK, path.open("a", encoding="utf-8") as f:
            f.write(data)
    except OSError:
        pass  # the run's temp dir is gone (a kernel outliving its run): the in-memory log still has it


def logged_connection_class(base: type, log: CommandLog) -> type:
    """A subclass of the connection class `base` whose every send goes past `log` first."""

    def send_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        log.note([args], getattr(self, "password", None))
        return base.send_command(self, *args, **kwargs)

    def pack_commands(self: Any, commands: Iterable[Sequence[Any]]) -> Any:
        commands = list(commands)
        log.note(commands, getattr(self, "password", None))
        return base.pack_commands(self, commands)

    return type(f"Logged{base.__name__}", (base,), {"command_log": log, "send_command": send_command,
                                                    "pack_commands": pack_commands})


def attach(client: redis.Redis, server: str, config_command: str = "CONFIG") -> CommandLog:
    """The log of `client`'s commands, attached now unless it already has one. Attach before the first command:
    a connection the pool made before keeps sending unlogged."""
    pool = client.connection_pool
    existing = getattr(pool.connection_class, "command_log", None)
    if isinstance(existing, CommandLog):
        return existing
    log = CommandLog(server, config_command)
    pool.connection_class = logged_connection_class(pool.connection_class, log)
    return log


def sent_in_step(run_id: str | None = None) -> list[str]:
    """The write commands this process sent during the step `run_id` (default: the one running now, from
    $RUNBOOK_RUN_ID; by hand, with none set: everything sent so far), over every log; each line prefixed with its
    server when they went to more than one."""
    run_id = os.environ.get(RUN_ID_ENV, "") if run_id is None else run_id
    entries = []
    for log in list(_LOGS):
        with log._lock:
            entries += [(e.seq, log.server, e.line, e.n) for e in log._entries if not run_id or e.run_id == run_id]
    entries.sort()
    return _lines((server, line, n) for _, server, line, n in entries)


def _lines(rows: Iterable[tuple[str, str, int]]) -> list[str]:
    rows = list(rows)
    several = len({server for server, _, _ in rows}) > 1
    keyed = [(f"{server}: {line}" if several else line, n) for server, line, n in rows]
    return [shown(line, n) for line, n in fold(keyed)]


def read_sent(path: Path | str, run_id: str) -> list[tuple[str, str, int]]:
    """The (server, line, count) rows of the step `run_id` in a run's command file ("" : the runner's own); empty
    when there is no such file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for raw in text.splitlines():
        try:
            row = json.loads(raw)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(row, dict) and row.get("run_id", "") == run_id:
            rows.append((str(row.get("server", "")), str(row.get("line", "")), int(row.get("n", 1))))
    return rows


def step_lines(path: Path | str, run_id: str) -> list[str]:
    """What the step `run_id` sent, as `sent_in_step` says it, read from the run's command file."""
    return _lines(read_sent(path, run_id))


def by_server(path: Path | str, run_id: str = "") -> dict[str, list[str]]:
    """The lines of `run_id` ("" : the runner's own, the server lock) in a run's command file, by server."""
    out: dict[str, list[tuple[str, int]]] = {}
    for server, line, n in read_sent(path, run_id):
        out.setdefault(server, []).append((line, n))
    return {server: [shown(line, n) for line, n in fold(rows)] for server, rows in out.items()}
