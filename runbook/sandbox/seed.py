"""The sandbox in the shape of the production server this runbook was written for: RDB on with the
save policy `3600 1 300 100 60 10000`, AOF off in redis.conf, and mixed keys saved in dump.rdb."""

from __future__ import annotations

from pathlib import Path

import redis

from runbook.errors import PreconditionFailed
from runbook.model import SettingChange
from runbook.sandbox.throwaway import Sandbox
from runbook.server.aof import apply_runtime
from runbook.server.settings import config_get

SCENARIOS = ("rdb-only", "runtime-aof")


def populate(client: redis.Redis, keys: int = 3000) -> int:
    """Write `keys` keys of mixed types (strings, hashes, lists, sets, sorted sets); returns DBSIZE."""
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        kind = i % 5
        if kind == 0:
            pipe.set(f"gateway:cache:{i}", f"response-{i}" * 4)
        elif kind == 1:
            pipe.hset(f"gateway:session:{i}", mapping={"user": f"u{i}", "model": "gpt", "tokens": i})
        elif kind == 2:
            pipe.rpush(f"gateway:queue:{i}", *[f"job-{i}-{j}" for j in range(3)])
        elif kind == 3:
            pipe.sadd(f"gateway:tags:{i}", "a", "b", f"t{i}")
        else:
            pipe.zadd(f"gateway:rate:{i}", {"m1": i, "m2": i + 1})
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()
    return int(client.dbsize())


def seed_sandbox(scenario: str = "rdb-only", *, binary: Path | None = None, keys: int = 3000) -> Sandbox:
    """A started sandbox with `keys` mixed keys saved in dump.rdb.

    `rdb-only`: AOF off at runtime and in the file.
    `runtime-aof`: AOF switched on at runtime with CONFIG SET (and complete on disk), still `no` in redis.conf.
    """
    if scenario not in SCENARIOS:
        raise PreconditionFailed(f"unknown sandbox scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    sb = Sandbox(binary=binary).start()
    try:
        client = sb.client()
        populate(client, keys)
        client.save()
        if scenario == "runtime-aof":
            fsync = config_get(client, ["appendfsync"])["appendfsync"]
            apply_runtime(client, [SettingChange("appendfsync", fsync, "everysec"),
                                   SettingChange("appendonly", "no", "yes")])
    except BaseException:
        sb.cleanup()
        raise
    return sb
