"""`archive prune`: routine inspections older than N days go, every change stays, the chain still verifies.

Each run of removed entries becomes one checkpoint (`index.CHECKPOINT`): the seq range it stands for,
what was removed, the hash before it and the hash the next entry continues from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from runbook.errors import ArchiveError, ParameterError
from runbook.evidence.appending import APPEND_ATTEMPTS, utc_now
from runbook.evidence.archive import read_store
from runbook.evidence.index import (
    CHECKPOINT,
    LEGACY_INDEX,
    Tail,
    canonical,
    is_checkpoint,
    lines,
    parse,
    records,
    segment_start,
    signed_bytes,
    split_torn,
    tail_of,
)
from runbook.evidence.signing import Signer
from runbook.evidence.stores import Conflict


@dataclass(frozen=True)
class Pruned:
    """What `prune` removed and kept."""

    records: int
    changes: int
    files: int
    segments: int
    kept: int
    cutoff: str


def _routine_changes(segments: list[tuple[str, bytes]], cutoff: datetime) -> set[str]:
    """Changes whose every record is a read-only inspection that started before `cutoff`."""
    by_change: dict[str, list[dict[str, Any]]] = {}
    for rec in records(segments):
        by_change.setdefault(str(rec.get("change_id") or ""), []).append(rec)
    by_change.pop("", None)  # a record with no change id is never pruned
    return {cid for cid, recs in by_change.items() if all(_routine(r, cutoff) for r in recs)}


def _routine(rec: dict[str, Any], cutoff: datetime) -> bool:
    if rec.get("notebook") != "inspect" or (rec.get("summary") or {}).get("result"):
        return False
    try:
        started = datetime.fromisoformat(str(rec.get("started")))
    except ValueError:
        return False
    return (started if started.tzinfo else started.replace(tzinfo=timezone.utc)) < cutoff


def prune(root: Path | str, keep_days: int, *, now: datetime | None = None) -> Pruned:
    """Remove the records and files of routine inspections (changes that only inspected) older than `keep_days`.

    Every record of a change that ran anything but `inspect` stays. Each run of removed entries becomes
    one checkpoint (signed with $RUNBOOK_SIGNING_KEY): it says what was removed and the hash the next
    entry continues from, so the chain still verifies. The files go after the index no longer lists them."""
    if keep_days < 1:
        raise ParameterError(f"--keep-days {keep_days}: keep at least 1 day of inspections")
    signer = Signer.from_env()
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=keep_days)
    store, segments, _ = read_store(root)
    prunable = _routine_changes(segments, cutoff)
    policy = (f"records of changes that only ran inspect, started before {cutoff.isoformat()} "
              f"(runbook archive prune --keep-days {keep_days})")
    removed_files: set[str] = set()
    kept_files: set[str] = set()
    removed = rewritten = 0
    before = Tail()
    with store.locked():
        for name, _ in segments:
            for _ in range(APPEND_ATTEMPTS):
                data, guard = store.read_guarded(name)
                start = before if name == LEGACY_INDEX else Tail(segment_start(name) - 1)
                new, gone, files, keep = _pruned(data or b"", start, prunable, policy, signer)
                try:
                    if gone:
                        store.replace(name, new, guard)
                    break
                except Conflict:
                    continue
            else:
                raise ArchiveError(f"{store.url}/{name} changed under every attempt to prune it")
            removed, rewritten = removed + gone, rewritten + bool(gone)
            removed_files |= files
            kept_files |= keep
            before = tail_of(name, new, start)
    for rel in sorted(removed_files - kept_files):
        store.remove(rel)
    kept = sum(1 for _ in records(read_store(root)[1]))  # read back: what the index holds now
    return Pruned(removed, len(prunable), len(removed_files - kept_files), rewritten, kept, cutoff.isoformat())


def _pruned(data: bytes, start: Tail, prunable: set[str], policy: str,
            signer: Signer | None) -> tuple[bytes, int, set[str], set[str]]:
    """A segment with the prunable records (and checkpoints next to them) folded into checkpoints: its new
    bytes, how many records went, their files and the files of the records that stay."""
    complete, torn = split_torn(data)
    out: list[bytes] = []
    run: list[tuple[dict[str, Any], bytes, Tail]] = []  # (entry, line, tail before it)
    gone, files, keep = 0, set(), set()
    tail = start

    def flush() -> None:
        if len(run) == 1 and is_checkpoint(run[0][0]):
            out.append(run[0][1])  # a checkpoint with nothing new next to it: as it was
        elif run:
            out.append(canonical(_checkpoint(run, policy, signer)))
        run.clear()

    for line in lines(complete):
        entry = parse(line)
        if entry is not None and (is_checkpoint(entry) or str(entry.get("change_id") or "") in prunable):
            run.append((entry, line, tail))
            if not is_checkpoint(entry):
                gone += 1
                files |= set(entry.get("files") or {})
        else:
            flush()
            out.append(line)
            keep |= set((entry or {}).get("files") or {})
        tail = tail.after(line)
    flush()
    return b"".join(ln + b"\n" for ln in out) + torn, gone, files, keep


def _checkpoint(run: list[tuple[dict[str, Any], bytes, Tail]], policy: str, signer: Signer | None) -> dict[str, Any]:
    """The one entry standing for `run` (records to remove, and checkpoints next to them)."""
    first, last = run[0], run[-1]
    lo = first[0]["seq"][0] if is_checkpoint(first[0]) else first[2].seq + 1
    end = last[2].after(last[1])
    counts = {"records": 0, "files": 0}
    started: list[str] = []
    for entry, _, _ in run:
        if is_checkpoint(entry):
            pruned = entry.get("pruned") or {}
            counts["records"] += int(pruned.get("records", 0))
            counts["files"] += int(pruned.get("files", 0))
            started += [s for s in pruned.get("started", []) if isinstance(s, str)]
        else:
            counts["records"] += 1
            counts["files"] += len(entry.get("files") or {})
            started.append(str(entry.get("started", "")))
    started = sorted(s for s in started if s)
    entry = {"kind": CHECKPOINT, "seq": [lo, end.seq], "prev_hash": first[0].get("prev_hash", first[2].prev_hash),
             "continues_from": end.prev_hash, "at": utc_now(), "policy": policy,
             "pruned": {**counts, "started": [started[0], started[-1]] if started else []}}
    if signer is not None:
        entry["signature"] = signer.sign(signed_bytes(entry))
    return entry
