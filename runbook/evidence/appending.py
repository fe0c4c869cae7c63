"""Appending to the archive's index: after the last entry, in the last segment, then the head.

An append reads the head and the last segment only (`_last_segment`), whatever the archive's size;
sets aside a partial last line before it writes (never glues to one); and redoes its read when
another writer came first (`stores.Conflict`). Writers on one host take the archive's lock.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from runbook.errors import ArchiveError
from runbook.evidence.index import (
    HEAD,
    INDEX_DIR,
    LEGACY_INDEX,
    SEGMENT_BYTES,
    TORN_SUFFIX,
    Tail,
    canonical,
    chained,
    head_entry,
    is_segment,
    ordered,
    parse,
    segment_name,
    signed_bytes,
    split_torn,
    tail_of,
    torn_is_whole,
)
from runbook.evidence.signing import Signer
from runbook.evidence.stores import Conflict, LocalStore, Store

log = logging.getLogger(__name__)

#: How often an append (or a head move, or a segment's prune) is redone when another writer changed it first.
APPEND_ATTEMPTS = 10


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def append_record(root: Path, record: dict[str, Any], signer: Signer | None = None) -> dict[str, Any]:
    """Append `record` to the local archive at `root`, chained to the last entry; returns it as written."""
    return append(LocalStore(root), record, signer)[0]


def append(store: Store, record: dict[str, Any], signer: Signer | None) -> tuple[dict[str, Any], str]:
    """Append `record` after the index's last entry, then move the head; returns it as written and its segment.

    Reads at most the last segment (and the head), whatever the archive's size. A partial last line (a
    write that did not finish) is set aside first, never glued to."""
    entries, name = append_many(store, [record], signer)
    return entries[0], name


def append_many(store: Store, records: Sequence[dict[str, Any]], signer: Signer | None,
                written: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Append `records` in order, chained one after the other, as `append` does one; returns them as written and
    the segment of the last.

    Each write takes as many of them as the last segment has room for: one write (and one fsync) for those, then
    one head move. A fleet step's thousand records cost a dozen writes, not a thousand; signed, each record is
    still signed on its own (its line's hash is the next one's prev_hash). `written` (when given) fills up as
    they land: after an error, the ones that are in the index."""
    written = [] if written is None else written
    name, misses = "", 0
    while len(written) < len(records):
        if misses >= APPEND_ATTEMPTS:
            raise ArchiveError(f"the index at {store.url} changed under every one of {APPEND_ATTEMPTS} attempts to "
                               "append to it: another writer keeps writing there")
        try:
            with store.locked():
                done = _append_once(store, records[len(written):], signer)
        except Conflict as err:
            misses += 1
            log.info("%s/%s changed while this run appended to it: appending again", store.url, err)
            time.sleep(random.uniform(0, 0.05 * misses))  # let the other writer finish
            continue
        if done is None:
            misses += 1
            continue
        entries, name = done
        written.extend(entries)
        misses = 0
    return written, name


def _append_once(store: Store, records: Sequence[dict[str, Any]], signer: Signer | None
                 ) -> tuple[list[dict[str, Any]], str] | None:
    """One write of the first of `records` (as many as the last segment takes, at least one), or None: a partial
    line was set aside, read again. Conflict when another writer came first."""
    name, data, guard, head = _last_segment(store)
    complete, torn = split_torn(data)
    if torn:
        _set_aside(store, name, complete, torn, guard, signer)
        return None
    tail = tail_of(name, complete)
    into_last = is_segment(name) and len(complete) < SEGMENT_BYTES
    size = len(complete) if into_last else 0
    entries: list[dict[str, Any]] = []
    chunk: list[bytes] = []
    for record in records:
        if entries and size >= SEGMENT_BYTES:
            break  # the segment is full: the rest start the next one
        entry = chained(record, tail)
        if signer is not None:
            entry["signature"] = signer.sign(signed_bytes(entry))
        line = canonical(entry) + b"\n"
        entries.append(entry)
        chunk.append(line)
        tail, size = tail.after(line, entry), size + len(line)
    if into_last:
        store.append(name, complete, b"".join(chunk), guard)
    else:
        name = segment_name(entries[0]["seq"])
        store.create(name, b"".join(chunk))
    _write_head(store, tail, name, signer, read=head)
    return entries, name


_Read = tuple[bytes | None, dict[str, str]]  # an object's bytes and its write guard


def _last_segment(store: Store) -> tuple[str, bytes, dict[str, str], _Read]:
    """The index's last segment (name, bytes, write guard) and the head as read: found from the head's hint,
    then by following the segment names (each is the seq of its first entry), so an append reads no more than
    the head and the last segment."""
    head = store.read_guarded(HEAD)
    hint = str((parse(head[0] or b"{}") or {}).get("segment", ""))
    data, guard = store.read_guarded(hint) if is_segment(hint) else (None, {})
    if data is None:
        names = ordered(store.segment_names())
        hint = names[-1] if names else LEGACY_INDEX
        data, guard = store.read_guarded(hint)
    name = hint
    while True:
        if data is None and name != LEGACY_INDEX:
            raise Conflict(name)  # removed between the listing and the read
        following = segment_name(tail_of(name, data or b"").seq + 1)
        if following == name or not store.exists(following):  # (== : a segment with no whole line yet)
            return name, data or b"", guard, head
        name = following
        data, guard = store.read_guarded(name)


def _set_aside(store: Store, name: str, complete: bytes, torn: bytes, guard: dict[str, str],
               signer: Signer | None) -> None:
    """A partial last line: a whole record that only lacks its newline gets it; anything else is moved to
    `index/<segment>.<UTC time><TORN_SUFFIX>` (which `archive verify` reports) and cut off the segment."""
    if torn_is_whole(torn):
        store.replace(name, complete + torn + b"\n", guard)
        log.warning("%s/%s: the last record lacked its newline (a write that stopped just before it): added",
                    store.url, name)
        return
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    side = f"{INDEX_DIR}/{Path(name).stem}.{stamp}{TORN_SUFFIX}"
    store.create(side, torn)
    store.replace(name, complete, guard)
    log.warning("%s/%s: a partial last line (%d bytes, a write that did not finish) was set aside in %s; the "
                "record it held is not in the chain", store.url, name, len(torn), side)
    # The head moves after the line is written: it names the torn record only when the line was cut after it
    # was whole. Then the head goes back by that one record (the side file keeps it reported), never further.
    _write_head(store, tail_of(name, complete), name, signer, back_by_one=True)


def _write_head(store: Store, tail: Tail, segment: str, signer: Signer | None, *, back_by_one: bool = False,
                read: _Read | None = None) -> None:
    """Move the head to `tail` unless it is there or beyond already (another writer got further first);
    `back_by_one`: only when it is exactly one entry beyond (a partial line was set aside). `read`: the head as
    this writer read it (a write over a head changed since fails, and it is read again)."""
    for attempt in range(APPEND_ATTEMPTS):
        old, guard = read if read is not None and attempt == 0 else store.read_guarded(HEAD)
        prior = parse(old or b"{}") or {}
        seq = prior.get("seq")
        if back_by_one and seq != tail.seq + 1 or not back_by_one and isinstance(seq, int) and seq >= tail.seq:
            return
        head = head_entry(tail, segment, utc_now())
        if signer is not None:
            head["signature"] = signer.sign(signed_bytes(head))
        try:
            store.replace(HEAD, canonical(head) + b"\n", guard)
            return
        except Conflict:
            continue
    log.warning("%s/%s was changed by other writers at every attempt: it stays behind seq %d until the next "
                "record", store.url, HEAD, tail.seq)
