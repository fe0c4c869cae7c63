"""Real LiteLLM traffic against a gateway's Redis while something runs beside it (a runbook change).

The gateway is LiteLLM's own `Router` in this process: mock deployments (`mock_response`, no network, the local
model cost map), usage-based routing whose rpm/tpm counters live in the Redis (`usage-based-routing-v2`: the
router's DualCache batches `INCRBYFLOAT` pipelines to Redis every 0.1 s, `litellm.router_strategy.lowest_tpm_rpm_v2`)
and the Redis response cache (`litellm.Cache(type="redis")`, under its own namespace). A few asyncio tasks make
completions without pause, half of them for prompts cached before the change, half for new prompts (routed to a
deployment, counted, written to the cache). LiteLLM keeps a copy of each response in a per-process memory tier in
front of Redis (`litellm.caching.caching_handler.in_memory_cache_obj`): it is emptied before every cached prompt,
as if the request reached another worker of the gateway, so the hit must come from Redis (a miss means LiteLLM
failed to read Redis, which it logs and hides from its caller).

An error is any of: a completion that raised, a cached prompt that came back a miss, and a record at WARNING or
above from LiteLLM's loggers (where it reports the Redis failures it swallows). `change_under_traffic` runs
`runbook run enable-aof persist-config -p apply true` beside it: used by tests/test_gateway_traffic.py and by the
benchmark's `gateway` row (benchmarks/gateway.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, TypeVar

import redis
from helpers import run_json

from runbook.sandbox.throwaway import SEED_CONFIG, Sandbox
from runbook.server.probe import LatencyStats

T = TypeVar("T")

#: What the traffic imports: LiteLLM, and what its cache-hit path needs from its proxy in 1.110 (BerriAI/litellm
#: issue 42195): the `gateway` extra of pyproject.toml installs them all.
MODULES = ("litellm", "fastapi", "orjson", "soundfile")
#: The response cache's key prefix (`litellm.Cache(namespace=...)`), so its entries are told from the seed's keys.
CACHE_NAMESPACE = "gateway-cache"
MODEL_GROUP = "gateway-model"
DEPLOYMENTS = ("gw-deployment-a", "gw-deployment-b")
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


def missing_modules() -> list[str]:
    """The modules of `MODULES` this Python cannot import."""
    return [m for m in MODULES if importlib.util.find_spec(m) is None]


def gateway_server(binary: Path, root: Path, keys: int) -> tuple[Sandbox, float]:
    """A started server in `root` with its own config file (the seed's: AOF off at runtime and in the file,
    `enable-debug-command local` added), `keys` keys written by DEBUG POPULATE and saved to dump.rdb; and the seconds
    the seed (populate and SAVE) took."""
    sb = Sandbox(config=SEED_CONFIG + "enable-debug-command local\n", binary=binary, root=root).start()
    try:
        client = sb.client(socket_timeout=120)
        t0 = time.perf_counter()
        client.execute_command("DEBUG", "POPULATE", keys)
        client.save()  # as the seed: the keys are in dump.rdb, no save rule left to fire during the change
        seconds = time.perf_counter() - t0
        assert client.dbsize() == keys
    except BaseException:
        sb.cleanup()
        raise
    return sb, seconds


@dataclass(frozen=True)
class Request:
    """One completion: wall-clock start and end (epoch seconds), its latency, and how it went."""

    start: float
    end: float
    ms: float
    cached_prompt: bool  # a prompt cached before the traffic: must come back a cache hit
    cache_hit: bool
    error: str = ""


@dataclass
class Traffic:
    """What the gateway saw: every request, and LiteLLM's own warnings and errors."""

    requests: list[Request] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    warmed: int = 0  # completions made before the traffic, to fill the cache
    #: After the traffic: a cached prompt was a hit; the cache's keys were deleted from Redis (how many); the same
    #: prompt then was a hit again (it must not be: the hits came from Redis, not from memory).
    hit_before_delete: bool = False
    deleted: int = 0
    hit_after_delete: bool = True
    counted: float = 0  # the router's rpm counters in Redis afterwards, summed: `made` when none was lost

    @property
    def made(self) -> int:
        """Every completion the router served, the warm-up's included."""
        return self.warmed + len(self.requests)

    def errors(self) -> list[str]:
        """Every client error, one line each (empty: none)."""
        out = [f"completion raised: {r.error}" for r in self.requests if r.error]
        out += ["a prompt cached in Redis came back a cache miss (LiteLLM could not read the cache)"
                for r in self.requests if r.cached_prompt and not r.error and not r.cache_hit]
        return out + [f"LiteLLM logged: {line}" for line in self.logged]

    def within(self, start: float, end: float) -> list[Request]:
        """The requests that started and ended between `start` and `end` (epoch seconds)."""
        return [r for r in self.requests if start <= r.start and r.end <= end]

    def overlapping(self, start: float, end: float) -> list[Request]:
        """The requests in flight at some moment between `start` and `end`."""
        return [r for r in self.requests if r.start <= end and r.end >= start]

    @staticmethod
    def latency(requests: list[Request]) -> dict[str, float | int]:
        """p50/p99/max in ms, computed as the runbook's PING probe computes its own (`LatencyStats`)."""
        return LatencyStats(tuple((r.start, r.ms) for r in requests if not r.error),
                            sum(1 for r in requests if r.error)).summary()


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self._into = into

    def emit(self, record: logging.LogRecord) -> None:
        self._into.append(f"{record.name} {record.levelname}: {record.getMessage()}"[:300])


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


async def drive(port: int, during: Callable[[], T], *, tasks: int = 4, cached_prompts: int = 16,
                lead_s: float = 1.0, delete_cache: Callable[[str], int] | None = None,
                count_wait_s: float = 5.0) -> tuple[T, Traffic]:
    """Run `during()` in a thread while `tasks` tasks make completions through a LiteLLM Router on the Redis at
    127.0.0.1:`port`; the traffic starts `lead_s` before it and stops when it returns. With `delete_cache` (given
    the key pattern of the cache's entries, returns how many it deleted from Redis), a cached prompt is asked again
    before and after it (`Traffic.hit_after_delete`). Then it waits up to `count_wait_s` for the counters in Redis to
    add up (`Traffic.counted`). Returns `during`'s result and the traffic."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from litellm import Router
    from litellm.caching.caching_handler import in_memory_cache_obj as memory_tier

    memory_tier.flush_cache()  # a fresh gateway process: nothing from an earlier server in memory
    traffic = Traffic()
    handler = _Collect(traffic.logged)
    loggers = [logging.getLogger(name) for name in _LITELLM_LOGGERS]
    for lg in loggers:
        lg.addHandler(handler)
    litellm.cache = litellm.Cache(type="redis", host="127.0.0.1", port=port, namespace=CACHE_NAMESPACE)
    model_list = [{"model_name": MODEL_GROUP,
                   "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-mock-no-network",
                                      "mock_response": f"answer from {name}", "rpm": 1_000_000, "tpm": 10**9},
                   "model_info": {"id": name}} for name in DEPLOYMENTS]
    # Counters kept an hour instead of a minute: a slow machine's run spanning three minutes still has them all.
    router = Router(model_list=model_list, redis_host="127.0.0.1", redis_port=port, num_retries=0,
                    routing_strategy="usage-based-routing-v2", routing_strategy_args={"ttl": 3600})
    stop = asyncio.Event()

    async def one(prompt: str, cached: bool) -> Request:
        if cached:  # as on another worker of the gateway: not in this process's memory tier, read from Redis
            memory_tier.flush_cache()
        start, t0 = time.time(), time.perf_counter()
        try:
            resp = await router.acompletion(model=MODEL_GROUP, messages=_messages(prompt), caching=True)
            hit, error = bool(resp._hidden_params.get("cache_hit")), ""
        except Exception as err:  # noqa: BLE001  (every failure a gateway's caller would see counts)
            hit, error = False, f"{type(err).__name__}: {err}"[:300]
        return Request(start, time.time(), (time.perf_counter() - t0) * 1000, cached, hit, error)

    async def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            cached = i % 2 == 0
            prompt = f"cached prompt {i // 2 % cached_prompts}" if cached else f"new prompt {n}-{i}"
            traffic.requests.append(await one(prompt, cached))
            i += 1

    try:
        for k in range(cached_prompts):  # fill the cache; the second call of each must be a hit
            first, again = await one(f"cached prompt {k}", False), await one(f"cached prompt {k}", True)
            traffic.warmed += 2
            assert not first.error and not first.cache_hit and again.cache_hit, \
                f"warm-up: {first.error or 'no cache miss then hit from Redis'}"
        workers = [asyncio.create_task(client(n)) for n in range(tasks)]
        await asyncio.sleep(lead_s)
        try:
            result = await asyncio.to_thread(during)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        if delete_cache is not None:
            traffic.hit_before_delete = (await one("cached prompt 0", True)).cache_hit
            traffic.deleted = delete_cache(f"{CACHE_NAMESPACE}:*")
            traffic.hit_after_delete = (await one("cached prompt 0", True)).cache_hit
            traffic.warmed += 2
        traffic.counted = await _counted(port, traffic.made, count_wait_s)
        return result, traffic
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        litellm.cache = None
        retire = getattr(router, "retire", None) or getattr(router, "discard", None)  # 1.110 / older LiteLLM
        if retire is not None:
            retire()  # its callbacks are global: the next Router's calls would feed this one's counters


async def _counted(port: int, made: int, timeout_s: float = 5.0) -> float:
    """The sum of the router's rpm counters in Redis once it reaches `made` (its batched writes go out every 0.1 s),
    or as it is after `timeout_s`; -1 when the server does not answer."""
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=10)
    deadline = time.monotonic() + timeout_s
    try:
        while (seen := sum(counters(client, "rpm").values())) < made and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return seen
    except redis.RedisError:
        return -1
    finally:
        client.close()


_LOG_TIME = re.compile(r"(\d+ \w+ \d{4} \d\d:\d\d:\d\d\.\d{3})")


def _log_time(line: str) -> float:
    m = _LOG_TIME.search(line)
    assert m, f"no timestamp in the server log line {line!r}"
    return datetime.strptime(m.group(1), "%d %b %Y %H:%M:%S.%f").timestamp()


def rewrite_window(log_text: str) -> tuple[float, float]:
    """The AOF rewrite's start and end (epoch seconds) from the server's own log: from `Background append only file
    rewriting started` to `Background AOF rewrite finished successfully` (Redis 7 and Valkey 9 say the same)."""
    lines = log_text.splitlines()
    start = next(ln for ln in lines if "append only file rewriting started" in ln)
    end = next(ln for ln in lines if "AOF rewrite finished successfully" in ln
               or "Background AOF rewrite finished" in ln)
    return _log_time(start), _log_time(end)


def counters(client: Any, kind: str) -> dict[str, float]:
    """The router's usage counters of `kind` (rpm or tpm) in the Redis, by key: `DEPLOYMENT_ID:MODEL:KIND:HH-MM`, one
    per deployment and minute (LiteLLM also keeps `global_router:` copies, left out here)."""
    keys = [k for d in DEPLOYMENTS for k in client.keys(f"{d}:*:{kind}:*")]
    return {k: float(v) for k, v in zip(keys, client.mget(keys))} if keys else {}


@dataclass(frozen=True)
class ChangeUnderTraffic:
    """A `runbook run enable-aof persist-config -p apply true` made while the gateway's traffic ran."""

    sandbox: Sandbox
    exit_code: int
    out: dict[str, Any]  # the run's --json
    stderr: str
    start: float  # the runbook process: started, ended (epoch seconds)
    end: float
    traffic: Traffic

    def rewrite(self) -> tuple[float, float]:
        """The initial AOF rewrite's window, from the server's log."""
        return rewrite_window(self.sandbox.log_text())

    def probe(self) -> dict[str, Any]:
        """The runbook's own PING probe during enable-aof (its summary's `latency` fact)."""
        return next(s["summary"] for s in self.out["steps"] if s["notebook"] == "enable-aof")["latency"]

    def report(self) -> dict[str, Any]:
        """The figures: run and rewrite seconds, requests, the client's latency before the change, during the run
        and during the rewrite, and the probe's."""
        rewrite, requests = self.rewrite(), self.traffic.requests
        return {
            "run_s": round(self.end - self.start, 2), "aof_rewrite_s": round(rewrite[1] - rewrite[0], 3),
            "requests": len(requests), "requests_during_rewrite": len(self.traffic.overlapping(*rewrite)),
            "client_errors": len(self.traffic.errors()),
            "client_before_change_ms": Traffic.latency([r for r in requests if r.end < self.start]),
            "client_during_run_ms": Traffic.latency(self.traffic.within(self.start, self.end)),
            "client_during_rewrite_ms": Traffic.latency(self.traffic.overlapping(*rewrite)),
            "runbook_ping_probe_ms": self.probe(),
        }


def change_under_traffic(sb: Sandbox, archive: Path, *, check_cache: bool = False,
                         lead_s: float = 2.0) -> ChangeUnderTraffic:
    """Run the change on `sb` (its config file given as `config_file`) under the gateway's traffic; with
    `check_cache`, prove afterwards that the cache hits came from Redis (`drive`'s `delete_cache`)."""
    client = sb.client(socket_timeout=60)
    window: dict[str, float] = {}

    def change() -> tuple[int, dict[str, Any], str]:
        window["start"] = time.time()
        try:
            return run_json(archive, "enable-aof", "persist-config", "-p", "target", sb.url,
                            "-p", "config_file", str(sb.config_path), "-p", "apply", "true")
        finally:
            window["end"] = time.time()

    def delete(pattern: str) -> int:
        keys = client.keys(pattern)
        return int(client.delete(*keys)) if keys else 0

    (rc, out, err), traffic = asyncio.run(drive(sb.port, change, lead_s=lead_s,
                                                delete_cache=delete if check_cache else None))
    return ChangeUnderTraffic(sb, rc, out, err, window["start"], window["end"], traffic)
