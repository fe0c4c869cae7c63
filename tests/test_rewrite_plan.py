"""The plan of CONFIG REWRITE names what the rewrite writes: predicted, then compared with real rewrites on
Redis 7, Valkey 9 and Redis 6.2 (`runbook.server.rewrite`, used by 03-persist-config)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import redis
from helpers import switch_aof_on

import runbook
from runbook.sandbox.binaries import binary_version
from runbook.sandbox.defaults import SET_BY_SANDBOX, server_defaults
from runbook.sandbox.throwaway import SEED_CONFIG, Sandbox
from runbook.server import rewrite
from runbook.server.configedit import read_raw
from runbook.server.configfile import split_args
from runbook.steps import persist_config as persist

#: The seed's file with what people's files carry: quotes the server writes otherwise, an indented comment,
#: trailing blanks, a CR line ending, a duplicate, an old name, bytes where the server writes mb, a renamed command.
DRIFTED = SEED_CONFIG + """
# Formatting the server does not keep
   # an indented comment
syslog-ident redis
proc-title-template '{title} {listen-addr} {server-mode}'
maxmemory 104857600\x20\x20\x20
slave-read-only yes
rename-command KEYS ""
timeout 0\r
hz 10
hz 10
"""
#: Runtime drift beyond persistence: set with CONFIG SET, so only CONFIG REWRITE puts it in the file.
NOT_PERSISTENCE = {"maxmemory": "200mb", "hz": "20", "maxmemory-policy": "allkeys-lru"}


def lines_match(prediction: rewrite.RewritePrediction, written: str, *, exact: bool) -> None:
    """The predicted file is the written one: line for line where the old file's lines stand, and the appended
    lines the same (in the same order where the server appends in a fixed order: Redis 6)."""
    want, got = prediction.text.split("\n"), written.split("\n")
    h = prediction.head
    assert want[:h] == got[:h]
    if exact:
        assert prediction.text == written
    else:
        assert Counter(want[h:]) == Counter(got[h:])


def drifted_server(make_sandbox, binary: Path, password: str):
    sb = make_sandbox(binary, config=DRIFTED, password=password)
    switch_aof_on(sb.client())
    for name, value in {**NOT_PERSISTENCE, "save": "900 1"}.items():
        sb.client().config_set(name, value)
    return sb


def test_plan_names_every_directive_the_rewrite_changes(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = drifted_server(make_sandbox, server_binary, "pw-rewrite")
    clean_env.setenv("REDIS_PASSWORD", "pw-rewrite")
    target = runbook.connect(sb.url)
    before = read_raw(sb.config_path)
    plan = persist.plan_persist(target, method="rewrite")
    assert plan.method == "rewrite" and plan.rewrite is not None and plan.rewrite.notes == ()
    planned = set(plan.directives)
    # All runtime-vs-file differences, not only persistence ones; what it keeps, it does not name.
    assert set(NOT_PERSISTENCE) | {"appendonly", "save", "dbfilename", "syslog-ident", "user", "timeout"} <= planned
    assert not {"rename-command", "protected-mode", "rdbcompression"} & planned
    assert "pw-rewrite" not in plan.diff and "+maxmemory-policy allkeys-lru" in plan.diff

    result = persist.apply_persist(target, plan, apply=True)  # the real CONFIG REWRITE
    assert result.result == "changed" and result.method == "rewrite"
    written = read_raw(sb.config_path)
    assert set(rewrite.changed_directives(before, written)) == set(result.directives) == planned
    assert result.unpredicted == ()
    lines_match(plan.rewrite, written, exact=binary_version(server_binary).version.startswith("6."))

    checks = persist.verify_persist(target, plan, result)
    assert "rewrite_as_planned" not in {c.name for c in checks}
    facts = persist.persist_summary(plan, result, checks).facts
    assert facts["planned_directives"] == sorted(planned) == facts["applied_directives"]
    assert facts["planned_diff"] == plan.diff and facts["diff"] == result.diff != ""

    # A prediction that ignores the non-persistence differences (the plan of the edit: the runbook's plan before
    # this one) would fail both comparisons.
    naive = rewrite.RewritePrediction(plan.new_text, len(plan.new_text.split("\n")),
                                      rewrite.changed_directives(before, plan.new_text))
    assert set(naive.directives) != planned
    assert set(NOT_PERSISTENCE) <= set(rewrite.differences(naive, written))


def test_seed_plan_shows_what_the_issue_saw_the_rewrite_write(server_binary: Path, make_sandbox, clean_env) -> None:
    """The seed's server (AOF on at runtime, off in the file), method auto: the plan names the re-quoted
    dbfilename, the appended user line (and latency-tracking-info-percentiles where the server has it)."""
    sb = make_sandbox(server_binary)
    switch_aof_on(sb.client())
    plan = persist.plan_persist(runbook.connect(sb.url), method="auto")
    assert plan.method == "rewrite"
    has_percentiles = "latency-tracking-info-percentiles" in sb.client().config_get("*")
    assert {"appendonly", "dbfilename", "user"} <= set(plan.directives)
    assert ("latency-tracking-info-percentiles" in plan.directives) == has_percentiles
    assert '+dbfilename "dump.rdb"' in plan.diff and "+# Generated by CONFIG REWRITE" in plan.diff
    sb.client().execute_command("CONFIG", "REWRITE")
    assert rewrite.differences(plan.rewrite, read_raw(sb.config_path)) == ()


def test_a_rewrite_other_than_planned_is_a_warning_not_a_failure(default_binary: Path, make_sandbox,
                                                                 clean_env) -> None:
    sb = make_sandbox(default_binary)
    switch_aof_on(sb.client())
    target = runbook.connect(sb.url)
    plan = persist.plan_persist(target, method="rewrite")
    sb.client().config_set("hz", "30")  # someone changes the server between plan and apply
    result = persist.apply_persist(target, plan, apply=True)
    assert result.result == "changed" and result.unpredicted == ("hz",)
    checks = persist.verify_persist(target, plan, result)
    warned = next(c for c in checks if c.name == "rewrite_as_planned")
    assert warned.status == "warn" and "hz" in warned.observed
    summary = persist.persist_summary(plan, result, checks)
    assert summary.verdict == "warn" and summary.result == "changed"
    assert "hz" in summary.facts["applied_directives"] and "hz" not in summary.facts["planned_directives"]


@pytest.mark.parametrize("text, runtime_extra, expect", [
    ("dir /data\nsave 900 1\nsave 300 10\n", {"save": "3600 1"}, 'dir "/data"\nsave 3600 1\n\n# Generated by'),
    ("bind * -::*\nmaxmemory 1073741824\n", {"maxmemory": "1073741824"}, "\nmaxmemory 1gb"),
    ("list-max-ziplist-entries 512\n", {}, "# ??? list-max-ziplist-entries 512"),
    ("unixsocket \"\"\nlogfile \"\"\n", {}, '\nlogfile ""'),
    ("client-output-buffer-limit pubsub 64mb 16mb 90\n", {
        "client-output-buffer-limit": "normal 0 0 0 slave 268435456 67108864 60 pubsub 67108864 16777216 90"},
     "client-output-buffer-limit normal 0 0 0"),
])
def test_rules_of_the_rewrite(text: str, runtime_extra: dict, expect: str) -> None:
    """Pure rules, each measured on a real server: save lines reused and blanked, bytes as gb, an option Redis 7
    no longer knows commented, an empty NULL string dropped, the pubsub limit's line taken by the normal one."""
    runtime = {"dir": "/data", "save": "900 1 300 10", "bind": "* -::*", "maxmemory": "0", "unixsocket": "",
               "logfile": "", "client-output-buffer-limit": "normal 0 0 0 slave 268435456 67108864 60 pubsub "
               "33554432 8388608 60", **runtime_extra}
    got = rewrite.predict_rewrite(text, runtime, server="redis", version="7.0.15", defaults={"maxmemory": "0"},
                                  acl_users=["user default on nopass ~* &* +@all"])
    assert got.text.startswith(expect)
    assert got.text.rstrip("\n").endswith("user default on nopass ~* &* +@all")


@pytest.mark.parametrize("value, repr_", [
    ("dump.rdb", '"dump.rdb"'), ("a b", '"a b"'), ('q"\\', '"q\\"\\\\"'), ("t\tn\n", '"t\\tn\\n"'),
    ("été", '"\\xc3\\xa9t\\xc3\\xa9"'), ("", '""'),
])
def test_strings_are_quoted_as_sdscatrepr(value: str, repr_: str) -> None:
    assert rewrite.c_repr(value) == repr_


@pytest.mark.parametrize("n, text", [(0, "0"), (64 << 20, "64mb"), (1 << 30, "1gb"), (2048, "2kb"), (3000, "3000")])
def test_memory_as_the_server_writes_it(n: int, text: str) -> None:
    assert rewrite.memory(n) == text


def test_redis_6_reads_a_long_line_in_pieces() -> None:
    """Redis 6 reads the old file with a 1024-byte fgets: a longer comment comes back as two lines (the second no
    comment: the next start may refuse the file). Seen on 6.2.14; the boot check catches it."""
    text = "# " + "x" * 1100 + "\n"
    got = rewrite.predict_rewrite(text, {"dir": "/d", "save": ""}, server="redis", version="6.2.14", acl_users=[])
    assert got.text.split("\n")[:2] == ["# " + "x" * 1022, "x" * 78]
    seven = rewrite.predict_rewrite(text, {"dir": "/d", "save": ""}, server="redis", version="7.0.15", acl_users=[])
    assert seven.text.split("\n")[0] == text.rstrip("\n")


def test_directives_named_by_a_diff() -> None:
    before = "# c\nmaxmemory 0\nsave 1 1\nsave 2 2\nrename-command KEYS \"\"\n"
    after = "# c\nmaxmemory 1gb\nsave 1 1\n\nrename-command KEYS \"\"\n# ??? bogus 1\n"
    assert rewrite.changed_directives(before, after) == ("bogus", "maxmemory", "save")
    assert rewrite.changed_directives(before, before) == ()


def test_defaults_are_the_binarys_own(server_binary: Path) -> None:
    """A throwaway's CONFIG GET * without what the throwaway sets itself; products differ (Valkey 9 frees lazily by
    default, Redis 7.0 and 6.2 do not)."""
    defaults = server_defaults(server_binary)
    assert not set(SET_BY_SANDBOX) & set(defaults)
    assert defaults["appendonly"] == "no" and defaults["save"] == "3600 1 300 100 60 10000"
    assert defaults["lazyfree-lazy-eviction"] == ("yes" if binary_version(server_binary).server == "valkey" else "no")


def test_the_type_tables_match_the_server(server_binary: Path, tmp_path: Path) -> None:
    """The prediction's tables (quoted strings, empty strings kept, memory values, old names) against the server
    itself: DEBUG CONFIG-REWRITE-FORCE-ALL writes every config in its canonical form, and CONFIG SET name 1kb parses
    only a memory value. A new server version with a config the tables miss fails here."""
    six = binary_version(server_binary).version.startswith("6.")
    sb = Sandbox(config="" if six else "enable-debug-command yes\n", binary=server_binary, root=tmp_path / "sb")
    try:
        sb.start()
        client = sb.client()
        runtime = {str(k): str(v) for k, v in client.config_get("*").items()}
        client.execute_command("DEBUG", "CONFIG-REWRITE-FORCE-ALL")
        lines = [split_args(ln) for ln in sb.config_path.read_text().split("\n") if ln and not ln.startswith("#")]
        forced = {args[0]: args[1:] for args in lines}
        quoted = {ln.split(" ", 1)[0] for ln in sb.config_path.read_text().split("\n") if ' "' in ln}
        for name in set(forced) & set(runtime) - {"dir", "notify-keyspace-events", "bind"}:
            assert (name in quoted) == (name in rewrite.STRINGS), name
        for name, value in runtime.items():
            if name in rewrite.STRINGS and value == "":
                assert (name in forced) == (name in rewrite.ALLOW_EMPTY), name
            elif name not in forced and name not in rewrite.STRINGS:
                assert name in rewrite.ALIASES or name in ("watchdog-period", "replicaof", "slaveof", "rdma-bind"), name
        for alias, primary in rewrite.ALIASES.items():
            if alias in runtime and primary in runtime:
                assert primary in forced or runtime[primary] == "", alias
        for name, value in runtime.items():
            if not re.fullmatch(r"-?\d+", value):
                continue
            try:
                client.config_set(name, "1kb")
                memory = True
                client.config_set(name, value)
            except redis.ResponseError as err:
                if "immutable" in str(err) or "Unsupported" in str(err):
                    continue  # not settable at runtime: its line in `forced` speaks for it
                memory = "between" in str(err) and "integer" not in str(err)
            assert memory == (name in rewrite.MEMORY), name
    finally:
        sb.cleanup()
