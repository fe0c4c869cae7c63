"""Keys the runbook writes on a cluster node: a hash tag in a slot the node serves (else MOVED)."""

from __future__ import annotations

from typing import Any

import redis
from redis.crc import key_slot

from runbook.errors import PreconditionFailed


def cluster_enabled(client: redis.Redis) -> bool:
    """Whether the server runs in cluster mode (INFO cluster)."""
    return bool(int(client.info("cluster").get("cluster_enabled", 0)))


def served_tag(client: redis.Redis, base: str) -> str:
    """`base-N` for the first N whose hash slot this cluster node serves as a master (CLUSTER SLOTS): the same
    tag for every caller with the same `base` while the slots stay where they are."""
    me = client.execute_command("CLUSTER", "MYID")
    me = me.decode() if isinstance(me, bytes) else str(me)
    served = [(int(r[0]), int(r[1])) for r in client.execute_command("CLUSTER", "SLOTS")
              if _node_id(r[2]) == me]
    if not served:
        raise PreconditionFailed("this cluster node serves no hash slot, so it takes no writes: "
                                 "point target at a master that serves slots (CLUSTER SLOTS)")
    for n in range(100_000):
        tag = f"{base}-{n}"
        if any(lo <= key_slot(tag.encode()) <= hi for lo, hi in served):
            return tag
    raise PreconditionFailed(f"no hash tag {base}-N maps to this node's slots {served}")


def _node_id(node: Any) -> str:
    """The node id in one entry of CLUSTER SLOTS (a list [ip, port, id, ...])."""
    value = node[2] if isinstance(node, (list, tuple)) and len(node) > 2 else ""
    return value.decode() if isinstance(value, bytes) else str(value)
