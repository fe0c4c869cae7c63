"""What the keyspace holds, from a bounded sample: SCAN under a key budget and a time budget, TYPE and PTTL of the
sampled keys, and the key classes an LLM gateway (LiteLLM) writes.

The cost does not grow with the dataset: at most `key_budget` keys are examined, over about `key_budget / count`
SCAN calls (https://redis.io/docs/latest/commands/scan/), each a bounded amount of work on the server, and the
sample stops at whichever budget ends first. Values are never read.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import redis

from runbook.errors import PreconditionFailed
from runbook.model import Word


class KeyClass(Word):
    """What a key is for, as far as its name tells."""

    RESPONSE_CACHE = "response-cache"  # cached LLM responses
    USAGE_COUNTER = "usage-counter"  # router and proxy usage counters (rpm/tpm per minute, rate-limit windows)
    COOLDOWN = "cooldown"  # deployments the router cooled down after failures, and their failure counts
    SPEND = "spend"  # spend counters, budget windows, spend updates waiting for the database
    GATEWAY_OTHER = "gateway-other"  # the gateway's other state: auth objects, locks, latency maps, pins
    RUNBOOK = "runbook"  # this runbook's own keys (the lock, canaries)
    OTHER = "other"  # not a shape the gateway or the runbook writes


#: The classes in the order the tables show them.
CLASSES = tuple(KeyClass)

_HEX64 = "[0-9a-f]{64}"
_MINUTE = r"\d{2}-\d{2}"

#: Key shapes, first match wins, each with the LiteLLM 1.110 code that writes it (module: function).
PATTERNS: tuple[tuple[KeyClass, re.Pattern[str]], ...] = tuple((c, re.compile(p)) for c, p in (
    # runbook.server.lock.lock_key, runbook.steps.test_persistence (canaries, the crash log).
    (KeyClass.RUNBOOK, r"^runbook:"),
    # litellm.redis.stores.spend_counters.types: key_counter, key_window_counter, team_counter,
    # team_member_counter, user_counter, end_user_counter, org_counter, tag_counter, project_counter, ...
    # (`spend:key:{hashed token}`, `spend:team:{id}:window:{duration}`, ...).
    (KeyClass.SPEND, r"^spend:"),
    # litellm.router_strategy.budget_limiter: RouterBudgetLimiting.async_log_success_event and
    # _init_provider_budget_in_cache (`provider_spend:{provider}:{duration}`, `deployment_spend:{id}:{duration}`,
    # `tag_spend:{tag}:{duration}` and their `*_budget_start_time:{...}` keys).
    (KeyClass.SPEND, r"^(?:provider|deployment|tag)_(?:spend|budget_start_time):"),
    # litellm.constants: REDIS_UPDATE_BUFFER_KEY, REDIS_DAILY_*_SPEND_UPDATE_BUFFER_KEY,
    # REDIS_WINDOW_SPEND_UPDATE_BUFFER_KEY, REDIS_SPEND_LOGS_BUFFER_KEY (lists the proxy's DB writer drains).
    (KeyClass.SPEND, r"^litellm_\w*spend\w*_buffer$"),
    # litellm.router_rust.routing_stores: _deployment_key (`deployment:{model_id}:cooldown`, written by
    # litellm.router_utils.cooldown_cache: CooldownCache.add_deployment_to_cooldown with TTL cooldown_time) and
    # litellm.router_utils.cooldown_handlers: should_cooldown_based_on_allowed_fails_policy
    # (`deployment:{model_id}:allowed_fails[:{suffix}]`, same TTL).
    (KeyClass.COOLDOWN, r"^deployment:.+:(?:cooldown|allowed_fails(?::.+)?)$"),
    # litellm.router_strategy.lowest_tpm_rpm_v2: pre_call_check, async_pre_call_check, log_success_event,
    # async_log_success_event (`{model_id}:{deployment}:rpm:HH-MM`, `{id}:{model}:tpm:HH-MM`, TTL
    # RoutingArgs.ttl = 60 s); litellm.types.router: RouterCacheEnum (`global_router:{id}:{model}:tpm|rpm|itpm|
    # otpm:HH-MM`, the router's own usage tracking, TTL 60 s); litellm.router_strategy.lowest_tpm_rpm
    # (`{model_group}:tpm:HH-MM`).
    (KeyClass.USAGE_COUNTER, rf"(?:^|:)(?:rpm|tpm|itpm|otpm):{_MINUTE}$"),
    # litellm.redis.stores.rate_limits.types: RateLimitScope, RateLimitCounter, RateLimitWindow, RateLimitGauge
    # (the proxy's v3 rate limiter: `{descriptor:value}:requests|tokens|window|max_parallel_requests`).
    (KeyClass.USAGE_COUNTER, r"^\{[^{}]+\}:(?:requests|tokens|window|max_parallel_requests)$"),
    # litellm.router_strategy.least_busy: _request_count_key (`{model_group}_request_count:{deployment_id}`) and
    # the reservation markers `least_busy_started:{call_id}:...`.
    (KeyClass.USAGE_COUNTER, r"^(?:least_busy_started:|.+_request_count:)"),
    # litellm.router_utils.prompt_caching_cache: _pin_cache_key (`deployment:{digest}:prompt_caching`, 300 s).
    (KeyClass.GATEWAY_OTHER, r"^deployment:[0-9a-f]+:prompt_caching$"),
    # litellm.proxy.auth.auth_checks: the proxy's cached team, user, org and project objects.
    (KeyClass.GATEWAY_OTHER, r"^(?:team_id|user_id|org_id|project_id|end_user_id):"),
    # litellm.proxy.db.db_transaction_queue.pod_lock_manager: PodLockManager.get_redis_lock_key.
    (KeyClass.GATEWAY_OTHER, r"^cronjob_lock:"),
    # litellm.router_utils.health_state_cache: CACHE_KEY (`litellm:health_check:deployment_health_state`).
    (KeyClass.GATEWAY_OTHER, r"^litellm:health_check:"),
    # litellm.router_strategy.lowest_latency (`{model_group}_map`, TTL 1 h), litellm.router_strategy.lowest_cost
    # (`cost_map:{group}`),
    # litellm.constants REDIS_GATEWAY_REQUESTS_BUFFER_KEY, REDIS_REQUEST_ERRORS_BUFFER_KEY, ... (other buffers).
    (KeyClass.GATEWAY_OTHER, r"^(?:cost_map:.+|.+_map|litellm_\w+_buffer(?:_v2)?)$"),
    # litellm.caching.caching: Cache.get_cache_key -> _get_hashed_cache_key (sha256 hex of the call's
    # parameters) -> _add_namespace_to_cache_key (`{namespace}:` in front when cache_params.namespace, the request's
    # `cache.namespace` or metadata.redis_namespace is set); litellm.caching.redis_cache:
    # RedisCache.check_and_fix_namespace, set_cache (TTL: the cache's `ttl`, else litellm.default_redis_ttl, else
    # BaseCache.default_ttl = 60 s). The proxy's cached API-key objects (litellm.proxy.utils: hash_token) are
    # sha256 hex too and count here.
    (KeyClass.RESPONSE_CACHE, rf"^(?:.+:)?{_HEX64}$"),
))


def classify(key: str) -> KeyClass:
    """The class of one key name (LiteLLM's shapes, this runbook's own, or other)."""
    for cls, pattern in PATTERNS:
        if pattern.search(key):
            return cls
    return KeyClass.OTHER


@dataclass(frozen=True)
class KeySample:
    """The keys one bounded SCAN saw, and what bounded it."""

    keys: tuple[str, ...]
    dbsize: int
    scan_calls: int
    finished: bool  # the cursor came back to 0: every key of the database was seen (or is a later write)
    elapsed_s: float
    key_budget: int
    time_budget_s: float
    count: int

    @property
    def stopped_by(self) -> str:
        """Why the sample ended: the keyspace's end, the key budget or the time budget."""
        if self.finished:
            return "end of the keyspace"
        return "key budget" if len(self.keys) >= self.key_budget else "time budget"


@dataclass(frozen=True)
class KeyMeta:
    """TYPE and PTTL of the sampled keys, as far as their own time budget allowed."""

    types: Mapping[str, str]
    pttl_ms: Mapping[str, int]  # -1: no TTL; keys gone since the SCAN are left out
    elapsed_s: float
    complete: bool  # every sampled key was asked


@dataclass(frozen=True)
class ClassStats:
    """One key class in the sample: how many, the estimate for the whole database, TTLs, an example."""

    key_class: KeyClass
    count: int
    estimated: int
    with_meta: int  # keys whose TTL was read
    no_ttl: int
    ttl_min_s: float | None
    ttl_median_s: float | None
    ttl_max_s: float | None
    types: Mapping[str, int] = field(default_factory=dict)
    example: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "estimated": self.estimated, "types": dict(self.types),
                "ttl": {"read": self.with_meta, "none": self.no_ttl, "min_s": self.ttl_min_s,
                        "median_s": self.ttl_median_s, "max_s": self.ttl_max_s},
                "example": self.example}


def _bytes_client(client: redis.Redis) -> tuple[redis.Redis, bool]:
    """A client on the same server whose replies stay bytes (a key need not be UTF-8), and whether it is new."""
    pool = client.connection_pool
    if not pool.connection_kwargs.get("decode_responses"):
        return client, False
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "decode_responses"}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)), True


def _name(key: bytes | str) -> str:
    """A key name as text that encodes back to the same bytes (`surrogateescape`), whatever bytes it holds."""
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key


def _wire(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _refused(err: redis.RedisError, what: str) -> PreconditionFailed:
    return PreconditionFailed(f"the key sample needs {what}, and the server refused it ({err}): grant the user "
                              "+scan +type +pttl +dbsize (read-only), or inspect without gateway")


def sample_keys(client: redis.Redis, *, key_budget: int = 10_000, time_budget_s: float = 1.0,
                count: int = 1000) -> KeySample:
    """SCAN from cursor 0 until `key_budget` keys are seen, `time_budget_s` has passed or the cursor is back at 0.

    Each call asks for at most the keys still within the budget (COUNT, never more than `count`), so the number of
    calls is about `key_budget / count` whatever the dataset's size; the budgets are checked between calls.
    """
    if key_budget < 1 or count < 1 or time_budget_s <= 0:
        raise ValueError("key_budget and count must be at least 1 and time_budget_s more than 0")
    raw, own = _bytes_client(client)
    start = time.monotonic()
    deadline = start + time_budget_s
    keys: dict[str, None] = {}  # SCAN may return a key twice (while the table rehashes): each counts once
    calls, cursor = 0, 0
    try:
        dbsize = int(raw.dbsize())
        while True:
            cursor, batch = raw.scan(cursor=cursor, count=min(count, key_budget - len(keys)))
            calls += 1
            keys.update((_name(k), None) for k in batch)
            cursor = int(cursor)
            if cursor == 0 or len(keys) >= key_budget or time.monotonic() >= deadline:
                break
    except redis.ResponseError as err:
        raise _refused(err, "SCAN and DBSIZE") from err
    finally:
        if own:
            raw.close()
    finished = cursor == 0
    # A call may return a few keys more than asked (a hash bucket's chain): the budget is a ceiling.
    return KeySample(tuple(keys)[:key_budget], dbsize, calls, finished and len(keys) <= key_budget,
                     time.monotonic() - start, key_budget, time_budget_s, count)


def key_meta(client: redis.Redis, keys: Sequence[str], *, time_budget_s: float = 1.0, batch: int = 1000) -> KeyMeta:
    """TYPE and PTTL of `keys` (https://redis.io/docs/latest/commands/pttl/), pipelined `batch` keys at a time,
    until all are asked or `time_budget_s` has passed (checked between batches)."""
    raw, own = _bytes_client(client)
    start = time.monotonic()
    deadline = start + time_budget_s
    types: dict[str, str] = {}
    ttls: dict[str, int] = {}
    done = 0
    try:
        while done < len(keys) and (done == 0 or time.monotonic() < deadline):
            chunk = keys[done:done + batch]
            pipe = raw.pipeline(transaction=False)
            for key in chunk:
                pipe.type(_wire(key))
                pipe.pttl(_wire(key))
            replies = pipe.execute()
            for i, key in enumerate(chunk):
                kind, pttl = _name(replies[2 * i]), int(replies[2 * i + 1])
                if pttl == -2 or kind == "none":  # removed or expired since the SCAN
                    continue
                types[key], ttls[key] = kind, pttl
            done += len(chunk)
    except redis.ResponseError as err:
        raise _refused(err, "TYPE and PTTL") from err
    finally:
        if own:
            raw.close()
    return KeyMeta(types, ttls, time.monotonic() - start, done >= len(keys))


def shown_key(key: str, limit: int = 72) -> str:
    """A key name fit to show: long segments (hashes, ids, tokens) cut to 8 characters, the whole cut to `limit`."""
    text = _wire(key).decode("utf-8", "backslashreplace")
    parts = [p if len(p) < 16 else p[:8] + "…" for p in text.split(":")]
    out = ":".join(parts)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def class_stats(sample: KeySample, meta: KeyMeta | None = None) -> tuple[ClassStats, ...]:
    """Per class seen in `sample`: count, the estimate for the database (count / sampled * DBSIZE, or the count
    itself when the sample covered every key), the TTL distribution of the keys `meta` read, and one example."""
    by_class: dict[KeyClass, list[str]] = {}
    for key in sample.keys:
        by_class.setdefault(classify(key), []).append(key)
    out: list[ClassStats] = []
    sampled = len(sample.keys)
    for cls in CLASSES:
        members = by_class.get(cls)
        if not members:
            continue
        pttl = meta.pttl_ms if meta is not None else {}
        types = meta.types if meta is not None else {}
        read = [k for k in members if k in pttl]
        ttls = sorted(pttl[k] / 1000 for k in read if pttl[k] >= 0)
        kinds: dict[str, int] = {}
        for k in read:
            kinds[types[k]] = kinds.get(types[k], 0) + 1
        estimated = len(members) if sample.finished else round(len(members) / sampled * sample.dbsize)
        out.append(ClassStats(
            cls, len(members), estimated, len(read), len(read) - len(ttls),
            _round(ttls[0]) if ttls else None, _round(statistics.median(ttls)) if ttls else None,
            _round(ttls[-1]) if ttls else None, kinds, shown_key(members[0])))
    return tuple(out)


def _round(seconds: float) -> float:
    return round(seconds, 1)

