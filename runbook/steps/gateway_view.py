"""What an LLM gateway (LiteLLM) keeps in its Redis: the key classes of a bounded sample, their TTLs, maxmemory and
its policy, what AOF protects for each class, and advice (apart from the inspection's verdict)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from runbook.errors import PreconditionFailed
from runbook.model import Check, Status
from runbook.server.keyspace import ClassStats, KeyClass, KeyMeta, KeySample, class_stats, key_meta, sample_keys
from runbook.server.target import Target

#: What AOF protects, class by class: what a crash that loses the last writes costs.
PROTECTS: dict[KeyClass, str] = {
    KeyClass.RESPONSE_CACHE: "re-creatable: losing them costs re-computation (the calls are made, and paid for, again)",
    KeyClass.USAGE_COUNTER: "matter only within their window (a minute): appendfsync everysec loses at most ~1 s of "
                            "counts",
    KeyClass.COOLDOWN: "matter for their cooldown (seconds): a lost one sends traffic to a failing deployment again",
    KeyClass.SPEND: "the ones to protect: spend and budgets not yet in the database; lost increments let a budget be "
                    "overspent",
    KeyClass.GATEWAY_OTHER: "re-creatable from the proxy's database or by the next request",
    KeyClass.RUNBOOK: "this runbook's own lock and canaries",
    KeyClass.OTHER: "not a shape the gateway writes: judge them by what writes them",
}

#: maxmemory-policy values that may evict any key, and those that evict only keys with a TTL.
ALLKEYS = ("allkeys-lru", "allkeys-lfu", "allkeys-random")
VOLATILE = ("volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")


@dataclass(frozen=True)
class GatewayView:
    """One look at a gateway's Redis: the sample, its classes, the memory settings and the advice."""

    sample: KeySample
    meta: KeyMeta
    classes: tuple[ClassStats, ...]
    maxmemory: int
    policy: str
    appendonly: str
    appendfsync: str
    advice: tuple[Check, ...]

    def stats(self, key_class: KeyClass) -> ClassStats | None:
        return next((c for c in self.classes if c.key_class == key_class), None)

    def rows(self) -> list[dict[str, Any]]:
        """The per-class table: count, estimate, TTLs, types, an example, and what AOF protects."""
        return [{"class": str(c.key_class), "in sample": c.count, "estimated": c.estimated,
                 "no TTL": c.no_ttl, "TTL min s": _shown(c.ttl_min_s), "TTL median s": _shown(c.ttl_median_s),
                 "TTL max s": _shown(c.ttl_max_s), "types": ", ".join(f"{t} {n}" for t, n in sorted(c.types.items())),
                 "example": c.example, "AOF protects": PROTECTS[c.key_class]} for c in self.classes]

    def budget_line(self) -> str:
        """What the sample cost and whether it covered the whole keyspace."""
        s, m = self.sample, self.meta
        if not s.scan_calls:
            return "no key sample: the server refused it (the advice gateway-keys says what to grant)"
        cover = ("the whole keyspace" if s.finished else
                 f"{len(s.keys)} of {s.dbsize} keys ({len(s.keys) / s.dbsize:.1%}; stopped by the {s.stopped_by})"
                 if s.dbsize else "an empty database")
        types = "" if m.complete else f"; TYPE/PTTL read for {len(m.pttl_ms)} keys before its time budget ended"
        return (f"sampled {cover}: {len(s.keys)} keys examined in {s.scan_calls} SCAN calls, {s.elapsed_s:.3f} s "
                f"(budgets: {s.key_budget} keys, {s.time_budget_s:g} s); TYPE/PTTL {m.elapsed_s:.3f} s{types}")

    def memory_line(self) -> str:
        limit = f"{self.maxmemory} bytes ({self.maxmemory / 2**20:.0f} MiB)" if self.maxmemory else "0 (no limit)"
        return (f"maxmemory {limit}, maxmemory-policy {self.policy}; appendonly {self.appendonly}, "
                f"appendfsync {self.appendfsync}")

    def facts(self) -> dict[str, Any]:
        """The inspect summary's `gateway_keys` fact."""
        s = self.sample
        return {
            "classes": {str(c.key_class): c.to_json() for c in self.classes},
            "sample": {"keys_examined": len(s.keys), "key_budget": s.key_budget, "time_budget_s": s.time_budget_s,
                       "scan_calls": s.scan_calls, "elapsed_s": round(s.elapsed_s, 4), "complete": s.finished,
                       "stopped_by": s.stopped_by, "dbsize": s.dbsize, "ttl_read": len(self.meta.pttl_ms),
                       "ttl_elapsed_s": round(self.meta.elapsed_s, 4)},
            "maxmemory": self.maxmemory,
            "maxmemory_policy": self.policy,
            "advice": {c.name: c.to_json() for c in self.advice},
        }


def gateway_advice(classes: Sequence[ClassStats], *, maxmemory: int, policy: str, appendonly: str,
                   appendfsync: str) -> list[Check]:
    """Advice on the memory policy and the fsync policy for the classes seen (pure: the tests' table)."""
    seen = {c.key_class: c for c in classes}
    out: list[Check] = []
    cache = seen.get(KeyClass.RESPONSE_CACHE)
    if cache is not None and cache.no_ttl:
        share = f"{cache.no_ttl} of {cache.with_meta} response-cache entries read have no TTL"
        if policy == "noeviction":
            when = ("every write fails once maxmemory is reached, counters and spend included" if maxmemory else
                    "with maxmemory 0 the cache grows until the host runs out of memory")
            out.append(Check("gateway-cache-ttl", Status.WARN, f"{share} and maxmemory-policy is noeviction: {when}",
                             "give the cache a TTL (cache_params.ttl in the LiteLLM config), or set maxmemory with "
                             "maxmemory-policy volatile-lru once the cache has a TTL"))
        elif policy in VOLATILE:
            out.append(Check("gateway-cache-ttl", Status.WARN, f"{share}; maxmemory-policy {policy} evicts only keys "
                             "with a TTL, so these never make room",
                             "give the cache a TTL (cache_params.ttl in the LiteLLM config)"))
    elif cache is not None:
        out.append(Check("gateway-cache-ttl", Status.PASS, f"the {cache.with_meta} response-cache entries read all "
                         f"expire (TTL up to {cache.ttl_max_s} s)"))
    evictable = [k for k in (KeyClass.SPEND, KeyClass.USAGE_COUNTER, KeyClass.COOLDOWN) if k in seen]
    if policy in ALLKEYS and KeyClass.SPEND in seen:
        out.append(Check("gateway-eviction", Status.WARN, f"maxmemory-policy {policy} may evict spend and budget "
                         "keys when memory is full", "use volatile-lru (it evicts only keys with a TTL: cache "
                         "entries, counters) or noeviction with a cache TTL"))
    elif policy in ALLKEYS + VOLATILE and evictable and maxmemory:
        which = ", ".join(str(k) for k in evictable if policy in ALLKEYS or _has_ttl(seen[k]))
        if which:
            out.append(Check("gateway-eviction", Status.PASS, f"note: maxmemory-policy {policy} may evict {which} "
                             "keys when memory is full (a router then undercounts its minute, or retries a cooled "
                             "deployment)"))
    spend = seen.get(KeyClass.SPEND)
    if spend is not None and appendonly != "yes":
        out.append(Check("gateway-spend-aof", Status.WARN, f"{spend.estimated} spend/budget keys (estimated) and AOF "
                         "is off: a crash loses every increment since the last snapshot",
                         "run enable-aof (appendfsync everysec loses at most ~1 s of writes)"))
    elif spend is not None and appendfsync == "no":
        out.append(Check("gateway-spend-aof", Status.WARN, "spend/budget keys with appendfsync no: the kernel decides "
                         "when writes reach the disk (often ~30 s)", "set appendfsync everysec"))
    elif spend is not None:
        out.append(Check("gateway-spend-aof", Status.PASS, f"spend/budget keys under AOF with appendfsync "
                         f"{appendfsync}" + (": a crash loses at most ~1 s of increments"
                                             if appendfsync == "everysec" else "")))
    return out


def _shown(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:g}"


def _has_ttl(stats: ClassStats) -> bool:
    return stats.with_meta > stats.no_ttl


def view_gateway(target: Target, runtime: Mapping[str, str], *, key_budget: int = 10_000,
                 time_budget_s: float = 1.0) -> GatewayView:
    """Sample `target`'s keys within the budgets (read-only: SCAN, TYPE, PTTL, DBSIZE, CONFIG GET) and classify.

    A user the server does not let sample (ACL: no SCAN, TYPE or PTTL) gets an empty sample and the advice
    `gateway-keys` (warn) saying what to grant: the rest of the inspection, and its verdict, stand."""
    memory = target.config_get(["maxmemory", "maxmemory-policy"])
    maxmemory, policy = int(memory.get("maxmemory", 0) or 0), memory.get("maxmemory-policy", "?")
    appendonly, appendfsync = runtime.get("appendonly", "?"), runtime.get("appendfsync", "?")
    try:
        sample = sample_keys(target.client, key_budget=key_budget, time_budget_s=time_budget_s)
        meta = key_meta(target.client, sample.keys, time_budget_s=time_budget_s)
    except PreconditionFailed as err:
        empty = KeySample((), 0, 0, False, 0.0, key_budget, time_budget_s, 0)
        return GatewayView(empty, KeyMeta({}, {}, 0.0, False), (), maxmemory, policy, appendonly, appendfsync,
                           (Check("gateway-keys", Status.WARN, f"no key sample: {err}"),))
    classes = class_stats(sample, meta)
    return GatewayView(sample, meta, classes, maxmemory, policy, appendonly, appendfsync,
                       tuple(gateway_advice(classes, maxmemory=maxmemory, policy=policy, appendonly=appendonly,
                                            appendfsync=appendfsync)))
