"""What a LiteLLM gateway keeps in its Redis: the key classes (keys written by real LiteLLM code and by hand), the
bounded sample (the same SCAN work on 10k and 1M keys), the advice, and inspect's gateway section end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis
from conftest import binary_or_skip
from helpers import index, run_json

from runbook.model import Status
from runbook.server.keyspace import (
    ClassStats,
    KeyClass,
    KeySample,
    class_stats,
    classify,
    key_meta,
    sample_keys,
    shown_key,
)
from runbook.steps.gateway_view import gateway_advice

H = "fac389531f25cedf24f370fd6e6a79b152062229a92aa2b257be0965cdbaeddf"  # a sha256 hex (a cache key, a model id)

#: One key of every shape, and its class (the shapes' sources are cited in runbook/server/keyspace.py).
SHAPES = [
    (H, KeyClass.RESPONSE_CACHE),  # Cache.get_cache_key without a namespace
    (f"litellm.caching:{H}", KeyClass.RESPONSE_CACHE),  # with cache_params.namespace
    (f"team-a:prod:{H}", KeyClass.RESPONSE_CACHE),  # a namespace holding a colon
    (f"{H}:openai/gpt-4o:rpm:02-42", KeyClass.USAGE_COUNTER),  # lowest_tpm_rpm_v2 pre_call_check
    (f"{H}:openai/gpt-4o:tpm:23-59", KeyClass.USAGE_COUNTER),  # lowest_tpm_rpm_v2 log_success_event
    (f"global_router:{H}:openai/gpt-4o:otpm:00-00", KeyClass.USAGE_COUNTER),  # RouterCacheEnum
    ("gpt-4o:tpm:12-30", KeyClass.USAGE_COUNTER),  # lowest_tpm_rpm (v1)
    ("{api_key:88dc28d0}:requests", KeyClass.USAGE_COUNTER),  # the proxy's v3 rate limiter
    ("{user:u1}:window", KeyClass.USAGE_COUNTER),
    ("gpt-4o_request_count:dep-1", KeyClass.USAGE_COUNTER),  # least_busy
    (f"deployment:{H}:cooldown", KeyClass.COOLDOWN),  # CooldownCache.add_deployment_to_cooldown
    (f"deployment:{H}:allowed_fails", KeyClass.COOLDOWN),
    (f"deployment:{H}:allowed_fails:RateLimitError", KeyClass.COOLDOWN),
    (f"spend:key:{H}", KeyClass.SPEND),  # spend_counters key_counter (a hashed token: not a cache entry)
    ("spend:team:t1:window:30d", KeyClass.SPEND),
    ("spend:end_user:e1", KeyClass.SPEND),
    ("provider_spend:openai:1d", KeyClass.SPEND),  # budget_limiter
    ("provider_budget_start_time:openai", KeyClass.SPEND),
    (f"deployment_spend:{H}:1d", KeyClass.SPEND),
    ("tag_budget_start_time:prod", KeyClass.SPEND),
    ("litellm_daily_spend_update_buffer", KeyClass.SPEND),  # constants REDIS_DAILY_SPEND_UPDATE_BUFFER_KEY
    ("litellm_spend_update_buffer", KeyClass.SPEND),
    (f"deployment:{H[:32]}:prompt_caching", KeyClass.GATEWAY_OTHER),
    ("team_id:t1", KeyClass.GATEWAY_OTHER),
    ("cronjob_lock:spend_flush", KeyClass.GATEWAY_OTHER),
    ("litellm:health_check:deployment_health_state", KeyClass.GATEWAY_OTHER),
    ("gpt-4o_map", KeyClass.GATEWAY_OTHER),  # lowest_latency
    ("cost_map:gpt-4o", KeyClass.GATEWAY_OTHER),
    ("litellm_gateway_requests_buffer_v2", KeyClass.GATEWAY_OTHER),
    ("runbook:lock:{runbook}", KeyClass.RUNBOOK),
    ("runbook:canary:20261201T233326:{23d684fc}:17", KeyClass.RUNBOOK),
    ("session:42", KeyClass.OTHER),
    (H[:63], KeyClass.OTHER),  # one hex digit short of a sha256
    (H.upper(), KeyClass.OTHER),  # LiteLLM's hashes are lower case
    ("gpt-4o:rpm:2-42", KeyClass.OTHER),  # not a HH-MM minute
    ("deployment:abc", KeyClass.OTHER),
]


@pytest.mark.parametrize(("key", "expected"), SHAPES)
def test_each_shape_has_its_class(key: str, expected: KeyClass) -> None:
    assert classify(key) == expected


def test_a_shown_key_hides_long_segments() -> None:
    assert shown_key(f"litellm.caching:{H}") == "litellm.caching:fac38953…"
    assert shown_key(f"deployment:{H}:cooldown") == "deployment:fac38953…:cooldown"
    assert shown_key("x" * 10 + ":" + "y:" * 60, limit=20) == "xxxxxxxxxx:y:y:y:y:…"
    assert shown_key(b"bin\xff:k".decode("utf-8", "surrogateescape")) == "bin\\xff:k"


def _stats(cls: KeyClass, *, no_ttl: int = 0, read: int = 10, ttl_max: float | None = 60.0) -> ClassStats:
    return ClassStats(cls, read, read * 100, read, no_ttl, 1.0, 30.0, ttl_max)


ADVICE = [
    # (classes, maxmemory, policy, appendonly, appendfsync) -> {check: status}
    ([_stats(KeyClass.RESPONSE_CACHE, no_ttl=3)], 2**30, "noeviction", "yes", "everysec",
     {"gateway-cache-ttl": Status.WARN}),
    ([_stats(KeyClass.RESPONSE_CACHE, no_ttl=3)], 0, "noeviction", "yes", "everysec",
     {"gateway-cache-ttl": Status.WARN}),
    ([_stats(KeyClass.RESPONSE_CACHE, no_ttl=3)], 2**30, "volatile-lru", "yes", "everysec",
     {"gateway-cache-ttl": Status.WARN, "gateway-eviction": None}),
    ([_stats(KeyClass.RESPONSE_CACHE)], 0, "noeviction", "no", "everysec", {"gateway-cache-ttl": Status.PASS}),
    ([_stats(KeyClass.RESPONSE_CACHE, no_ttl=3)], 2**30, "allkeys-lru", "yes", "everysec", {}),
    ([_stats(KeyClass.SPEND, no_ttl=10, ttl_max=None)], 2**30, "allkeys-lfu", "yes", "everysec",
     {"gateway-eviction": Status.WARN, "gateway-spend-aof": Status.PASS}),
    ([_stats(KeyClass.USAGE_COUNTER)], 2**30, "allkeys-lru", "no", "everysec", {"gateway-eviction": Status.PASS}),
    ([_stats(KeyClass.USAGE_COUNTER)], 2**30, "volatile-ttl", "no", "everysec", {"gateway-eviction": Status.PASS}),
    ([_stats(KeyClass.USAGE_COUNTER)], 0, "allkeys-lru", "no", "everysec", {}),  # no maxmemory: nothing is evicted
    ([_stats(KeyClass.SPEND, no_ttl=10, ttl_max=None)], 0, "noeviction", "no", "everysec",
     {"gateway-spend-aof": Status.WARN}),
    ([_stats(KeyClass.SPEND, no_ttl=10, ttl_max=None)], 0, "noeviction", "yes", "no",
     {"gateway-spend-aof": Status.WARN}),
    ([_stats(KeyClass.OTHER)], 2**30, "allkeys-lru", "no", "no", {}),
]


@pytest.mark.parametrize(("classes", "maxmemory", "policy", "appendonly", "appendfsync", "expected"), ADVICE)
def test_advice(classes: list[ClassStats], maxmemory: int, policy: str, appendonly: str, appendfsync: str,
                expected: dict[str, Status | None]) -> None:
    got = {c.name: c.status for c in gateway_advice(classes, maxmemory=maxmemory, policy=policy,
                                                     appendonly=appendonly, appendfsync=appendfsync)}
    assert got == {k: v for k, v in expected.items() if v is not None}
    for c in gateway_advice(classes, maxmemory=maxmemory, policy=policy, appendonly=appendonly,
                            appendfsync=appendfsync):
        assert c.status == Status.PASS or c.fix, c  # a warning says what to do


def test_class_stats_estimate_and_ttls() -> None:
    from runbook.server.keyspace import KeyMeta

    keys = (f"gw:{H}", f"gw:{H[::-1]}", "a:rpm:01-02", "x")
    sample = KeySample(keys, dbsize=4000, scan_calls=1, finished=False, elapsed_s=0.01, key_budget=4,
                       time_budget_s=1.0, count=4)
    meta = KeyMeta({k: "string" for k in keys[:3]}, {keys[0]: 600_000, keys[1]: -1, keys[2]: 59_500},
                   elapsed_s=0.01, complete=False)
    stats = {s.key_class: s for s in class_stats(sample, meta)}
    cache = stats[KeyClass.RESPONSE_CACHE]
    assert (cache.count, cache.estimated, cache.no_ttl, cache.ttl_max_s, cache.with_meta) == (2, 2000, 1, 600.0, 2)
    assert stats[KeyClass.USAGE_COUNTER].ttl_min_s == 59.5
    assert stats[KeyClass.OTHER].with_meta == 0 and stats[KeyClass.OTHER].types == {}
    done = KeySample(keys, 4, 1, True, 0.01, 10, 1.0, 10)
    assert {s.key_class: s.estimated for s in class_stats(done)}[KeyClass.RESPONSE_CACHE] == 2


# -- real servers -----------------------------------------------------------------------------------------------------

DEBUG_CONFIG = 'save ""\nappendonly no\nenable-debug-command local\n'


@pytest.mark.parametrize("label", ["redis-7", "valkey-9"])
def test_the_sample_costs_the_same_on_10k_and_1m_keys(label: str, make_sandbox) -> None:
    """Same key budget, same SCAN calls and keys examined, whether the database holds 10k or 1M keys."""
    sb = make_sandbox(binary_or_skip(label), config=DEBUG_CONFIG)
    small, large = sb.client(db=1), sb.client(db=2)
    small.execute_command("DEBUG", "POPULATE", 10_000, "k")
    large.execute_command("DEBUG", "POPULATE", 1_000_000, "k")
    assert (small.dbsize(), large.dbsize()) == (10_000, 1_000_000)
    # A time budget far above what 5 calls take: the key budget is the one that ends the sample.
    got = [sample_keys(c, key_budget=5000, time_budget_s=60.0, count=1000) for c in (small, large)]
    for s in got:
        assert len(s.keys) == 5000 and len(set(s.keys)) == 5000
        assert not s.finished and s.stopped_by == "key budget"
        assert s.elapsed_s > 0
    assert got[0].scan_calls == got[1].scan_calls <= 6
    big = got[1]
    meta = key_meta(large, big.keys, time_budget_s=60.0)
    assert meta.complete and len(meta.pttl_ms) == 5000 and set(meta.types.values()) == {"string"}
    (other,) = class_stats(big, meta)
    assert (other.key_class, other.count, other.estimated, other.no_ttl) == (KeyClass.OTHER, 5000, 1_000_000, 5000)
    # The time budget ends it too: one call once the budget is spent, never a walk over the million keys.
    timed = sample_keys(large, key_budget=1_000_000, time_budget_s=1e-9, count=1000)
    assert timed.scan_calls == 1 and timed.stopped_by == "time budget" and len(timed.keys) < 2000
    # A small database is covered whole, and says so.
    whole = sample_keys(small, key_budget=20_000, time_budget_s=60.0)
    assert whole.finished and whole.stopped_by == "end of the keyspace" and len(whole.keys) == 10_000


LITELLM_DRIVER = textwrap.dedent("""
    import asyncio, sys
    import litellm
    from litellm import Router
    from litellm.caching.caching import Cache

    port = int(sys.argv[1])
    litellm.cache = Cache(type="redis", host="127.0.0.1", port=port, namespace="litellm.caching", ttl=600)
    deployment = {"api_key": "sk-not-a-key", "rpm": 1000, "tpm": 100000}
    router = Router(
        model_list=[{"model_name": "gpt-x", "litellm_params": {"model": "openai/gpt-x", "mock_response": "a",
                                                               **deployment}},
                    {"model_name": "gpt-x", "litellm_params": {"model": "openai/gpt-y", "mock_response": "b",
                                                               **deployment}}],
        redis_host="127.0.0.1", redis_port=port, routing_strategy="usage-based-routing-v2", cache_responses=True,
        allowed_fails=0, cooldown_time=30, num_retries=0)

    async def main():
        for i in range(6):
            await router.acompletion(model="gpt-x", messages=[{"role": "user", "content": f"q{i}"}], caching=True)
        router.completion(model="gpt-x", messages=[{"role": "user", "content": "sync"}], caching=True)
        try:
            await router.acompletion(model="gpt-x", messages=[{"role": "user", "content": "x"}],
                                     mock_response=Exception("boom"))
        except Exception:
            pass
        # A cache without a namespace: bare sha256 keys.
        Cache(type="redis", host="127.0.0.1", port=port, ttl=120).add_cache("r", model="gpt-x",
                                                                          messages=[{"role": "user", "content": "z"}])
        await asyncio.sleep(1.0)  # the usage counters are written after the call returns

    asyncio.run(main())
""")


def test_keys_written_by_litellm_are_classified(default_binary: Path, make_sandbox, tmp_path: Path) -> None:
    if importlib.util.find_spec("litellm") is None:
        pytest.skip("litellm is not installed (pip install -e '.[gateway]'): the keys are LiteLLM's own")
    sb = make_sandbox(default_binary, config='save ""\nappendonly no\n')
    driver = tmp_path / "drive_litellm.py"
    driver.write_text(LITELLM_DRIVER)
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    proc = subprocess.run([sys.executable, str(driver), str(sb.port)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = sb.client()
    sample = sample_keys(client)
    meta = key_meta(client, sample.keys)
    classes = {k: classify(k) for k in sample.keys}
    assert sample.finished and len(sample.keys) == client.dbsize()
    assert KeyClass.OTHER not in classes.values(), [k for k, c in classes.items() if c == KeyClass.OTHER]
    stats = {s.key_class: s for s in class_stats(sample, meta)}
    assert set(stats) == {KeyClass.RESPONSE_CACHE, KeyClass.USAGE_COUNTER, KeyClass.COOLDOWN}
    cache = [k for k, c in classes.items() if c == KeyClass.RESPONSE_CACHE]
    assert any(k.startswith("litellm.caching:") for k in cache) and any(":" not in k for k in cache)
    assert stats[KeyClass.RESPONSE_CACHE].no_ttl == 0 and stats[KeyClass.RESPONSE_CACHE].ttl_max_s <= 600
    counters = [k for k, c in classes.items() if c == KeyClass.USAGE_COUNTER]
    assert any(":rpm:" in k for k in counters) and any(":tpm:" in k for k in counters)
    assert 0 < stats[KeyClass.USAGE_COUNTER].ttl_max_s <= 60  # RoutingArgs.ttl: one minute
    assert any(k.endswith(":cooldown") for k, c in classes.items() if c == KeyClass.COOLDOWN)
    assert 0 < stats[KeyClass.COOLDOWN].ttl_max_s <= 30  # the router's cooldown_time


def _seed_gateway_keys(client: redis.Redis) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(40):
        pipe.set(f"litellm.caching:{i:064x}", "{}")  # no TTL: noeviction makes that a warning
    for i in range(5):
        pipe.set(f"dep{i}:openai/gpt-x:rpm:02-42", i, ex=60)
    pipe.set(f"deployment:{H}:cooldown", "{}", ex=600)
    pipe.set("spend:team:t1", "1.5")
    pipe.execute()


def test_inspect_with_gateway_shows_and_records_the_key_classes(default_binary: Path, make_sandbox,
                                                                 tmp_path: Path, clean_env) -> None:
    sb = make_sandbox(default_binary)
    _seed_gateway_keys(sb.client())
    archive = tmp_path / "archive"
    code, _, err = run_json(archive, "inspect", "-p", "target", sb.url, "-p", "gateway", "true")
    assert code in (0, 1), err
    code, _, err = run_json(archive, "inspect", "-p", "target", sb.url)
    assert code in (0, 1), err
    with_gateway, without = (r for r in index(archive) if r["notebook"] == "inspect")
    facts = with_gateway["summary"]["gateway_keys"]
    assert {c: v["count"] for c, v in facts["classes"].items()} == {
        "response-cache": 40, "usage-counter": 5, "cooldown": 1, "spend": 1}
    assert facts["classes"]["response-cache"]["ttl"]["none"] == 40
    assert facts["sample"]["complete"] and facts["sample"]["keys_examined"] == 47 <= facts["sample"]["key_budget"]
    assert facts["sample"]["elapsed_s"] >= 0 and facts["maxmemory_policy"] == "noeviction"
    assert facts["advice"]["gateway-cache-ttl"]["status"] == "warn"
    assert facts["advice"]["gateway-spend-aof"]["status"] == "warn"  # the sandbox runs with AOF off in its file
    assert with_gateway["summary"]["verdict"] == without["summary"]["verdict"]  # advice is not part of it
    assert "gateway_keys" not in without["summary"]
    shown, hidden = (_gateway_outputs(archive / next(f for f in r["files"] if f.endswith(".ipynb")))
                     for r in (with_gateway, without))
    assert "response-cache" in shown and "AOF protects" in shown and "SCAN calls" in shown
    assert "maxmemory-policy noeviction" in shown
    assert hidden == ""


def _gateway_outputs(path: Path) -> str:
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c.get("id") == "inspect-gateway")
    return "".join("".join(o.get("data", {}).get(kind, "")) for o in cell["outputs"]
                   for kind in ("text/markdown", "text/html"))


def test_a_user_not_allowed_to_sample_keeps_the_inspection_and_is_told_what_to_grant(
        default_binary: Path, make_sandbox, tmp_path: Path, clean_env) -> None:
    """An ACL user without SCAN: the inspection and its verdict stand (as without gateway); the advice gateway-keys
    (warn) says what to grant, and the section says there is no sample."""
    sb = make_sandbox(default_binary)
    _seed_gateway_keys(sb.client())
    sb.client().execute_command("ACL", "SETUSER", "lim", "on", ">limpw", "~*", "&*", "+@all", "-scan")
    archive = tmp_path / "archive"
    env = {**os.environ, "LIMPW": "limpw"}
    common = ("inspect", "-p", "target", sb.url, "-p", "username", "lim", "-p", "password_env", "LIMPW")
    code_with, _, err = run_json(archive, *common, "-p", "gateway", "true", env=env)
    code_without, _, err2 = run_json(archive, *common, env=env)
    assert code_with == code_without, (err, err2)
    with_gateway, without = (r for r in index(archive) if r["notebook"] == "inspect")
    assert with_gateway["summary"]["verdict"] == without["summary"]["verdict"] != "error"
    advice = with_gateway["summary"]["gateway_keys"]["advice"]["gateway-keys"]
    assert advice["status"] == "warn" and "+scan" in advice["observed"]
    assert with_gateway["summary"]["gateway_keys"]["classes"] == {}
    shown = _gateway_outputs(archive / next(f for f in with_gateway["files"] if f.endswith(".ipynb")))
    assert "no key sample" in shown
