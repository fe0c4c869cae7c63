"""The archive's index as bytes: records chained by hash, split into segments, anchored by a head.

Pure: nothing here reads or writes a store (`stores` does, `archive` ties the two together).

An index is a sequence of segments, `index/<seq of its first entry>.jsonl` (after the old single
`index.jsonl`, which archives written before the split still have and which is read first). Each
line is one entry: a record (one run of one step) or a checkpoint (what `archive prune` removed).
A record carries `seq` (its number in the chain, from 1) and `prev_hash` (the sha256 of the line
before it); a checkpoint carries the seq range it stands for, `prev_hash`, and `continues_from`: the
hash the entry after it chains to. `head.json` names the last seq and the hash the next record will
chain to; with a signing key, every entry and the head carry an OpenSSH signature (`signature`) over
their canonical JSON without that field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

GENESIS = "0" * 64
#: The single index of archives written before it was split into segments (read, never appended to).
LEGACY_INDEX = "index.jsonl"
INDEX_DIR = "index"
HEAD = "head.json"
#: A segment takes records until it holds this many bytes; then the next record starts a new one.
#: On an object store each append rewrites the last segment: this bounds what an append costs.
SEGMENT_BYTES = 256 << 10
CHECKPOINT = "checkpoint"
#: The kind of the entry that lists a change's report (`runbook.evidence.change_report`): it chains and is verified
#: like a record, and lists its files, but is not a run of a step (`records` leaves it out).
REPORT = "report"
_SEGMENT = re.compile(rf"{INDEX_DIR}/(\d{{10}})\.jsonl")
TORN_SUFFIX = ".torn"


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def signed_bytes(entry: dict[str, Any]) -> bytes:
    """What an entry's (or the head's) signature covers: its canonical JSON without the signature."""
    return canonical({k: v for k, v in entry.items() if k != "signature"})


def segment_name(first_seq: int) -> str:
    return f"{INDEX_DIR}/{first_seq:010d}.jsonl"


def segment_start(name: str) -> int:
    """The seq of a segment's first entry (1 for the old single index)."""
    m = _SEGMENT.fullmatch(name)
    return int(m.group(1)) if m else 1


def is_segment(rel: str) -> bool:
    return _SEGMENT.fullmatch(rel) is not None


def is_index_file(rel: str) -> bool:
    """A file of the index (segments, head, set-aside partial lines; `index/.*`: its lock and temp files)."""
    if rel in (LEGACY_INDEX, HEAD):
        return True
    inside = rel.startswith(f"{INDEX_DIR}/") and "/" not in rel[len(INDEX_DIR) + 1:]
    return inside and (is_segment(rel) or rel.endswith(TORN_SUFFIX) or rel[len(INDEX_DIR) + 1:].startswith("."))


def ordered(names: Iterable[str]) -> list[str]:
    """Segment names in chain order: the old single index first, then by first seq."""
    return sorted((n for n in names if n == LEGACY_INDEX or is_segment(n)), key=lambda n: (n != LEGACY_INDEX,
                                                                                          segment_start(n)))


def split_torn(data: bytes) -> tuple[bytes, bytes]:
    """The complete lines of a segment, and what follows the last newline: a write that did not finish."""
    cut = data.rfind(b"\n") + 1
    return data[:cut], data[cut:]


def torn_is_whole(torn: bytes) -> bool:
    """A partial last line that is a whole JSON object lacks only its newline (no prefix of one parses)."""
    try:
        return isinstance(json.loads(torn), dict)
    except ValueError:
        return False


def parse(line: bytes) -> dict[str, Any] | None:
    """The entry on a line; None when the line is not a JSON object."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def is_checkpoint(entry: dict[str, Any]) -> bool:
    return entry.get("kind") == CHECKPOINT


def is_report(entry: dict[str, Any]) -> bool:
    return entry.get("kind") == REPORT


@dataclass(frozen=True)
class Tail:
    """Where the chain ends: the last seq, and the hash the next entry's prev_hash must be."""

    seq: int = 0
    prev_hash: str = GENESIS

    def after(self, line: bytes, entry: dict[str, Any] | None | bool = False) -> Tail:
        """The tail once `line` follows (a line that is not JSON still counts as one entry); `entry`: the line
        already parsed (None: not JSON), so it is not parsed twice."""
        entry = parse(line) if entry is False else entry
        if isinstance(entry, dict) and is_checkpoint(entry):
            return Tail(_range(entry)[1], str(entry.get("continues_from", "")))
        seq = entry.get("seq") if isinstance(entry, dict) else None
        return Tail(seq if isinstance(seq, int) else self.seq + 1, line_hash(line))


def _range(checkpoint: dict[str, Any]) -> tuple[int, int]:
    seq = checkpoint.get("seq")
    if isinstance(seq, list) and len(seq) == 2 and all(isinstance(s, int) for s in seq):
        return seq[0], seq[1]
    return 0, -1


def lines(data: bytes) -> list[bytes]:
    return [ln for ln in data.splitlines() if ln.strip()]


def tail_of(name: str, data: bytes, before: Tail | None = None) -> Tail:
    """The tail after a segment's complete lines (`before`: the tail before it, for the old single index).

    Parses the last line only when it numbers itself (every entry written since `seq` exists does), so an
    append costs one parse whatever the segment holds; else counts the lines from the segment's start."""
    complete = split_torn(data)[0].rstrip(b"\n")
    last = complete[complete.rfind(b"\n") + 1:]
    entry = parse(last) if last.strip() else None
    if entry is not None and (isinstance(entry.get("seq"), int) or is_checkpoint(entry) and _range(entry)[0]):
        return Tail().after(last, entry)
    tail = before if before is not None else Tail(segment_start(name) - 1)
    for line in lines(complete):
        tail = tail.after(line)
    return tail


def chained(record: dict[str, Any], tail: Tail) -> dict[str, Any]:
    """`record` as the entry after `tail` (any seq, prev_hash or signature it carried replaced)."""
    fresh = {k: v for k, v in record.items() if k not in ("seq", "prev_hash", "signature")}
    return {**fresh, "seq": tail.seq + 1, "prev_hash": tail.prev_hash}


def head_entry(tail: Tail, segment: str, updated: str) -> dict[str, Any]:
    return {"format": 1, "seq": tail.seq, "hash": tail.prev_hash, "segment": segment, "updated": updated}


def records(segments: Iterable[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    """The records (not checkpoints, nor change reports) of the segments, in order; lines that are not JSON are
    left out."""
    for _, data in segments:
        for line in lines(split_torn(data)[0]):
            entry = parse(line)
            if entry is not None and not is_checkpoint(entry) and not is_report(entry):
                yield entry


# --- verification -------------------------------------------------------------------------------

#: `digest(rel)`: a file's (sha256, size), None when it is missing.
Digest = Callable[[str], "tuple[str, int] | None"]
#: `check(message, signature)`: None when the signature is good, else why not.
Check = Callable[[bytes, str], "str | None"]


@dataclass
class Findings:
    """What verification found: problems (exit 1) and notes (what it could and could not prove)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: int = 0
    pruned: int = 0
    reports: int = 0


@dataclass
class _Walk:
    check: Check | None
    tail: Tail = field(default_factory=Tail)
    at_seq: dict[int, str] = field(default_factory=dict)  # the chain's hash right after seq (for the head)
    listed: dict[str, tuple[str, int | None, str]] = field(default_factory=dict)  # rel -> (sha, size, who)
    announced: dict[str, dict[str, Any]] = field(default_factory=dict)  # a journal's `evidence` -> its record
    signed: int = 0
    unsigned_before_first_signed: int = 0
    bad: list[str] = field(default_factory=list)


def examine(segments: list[tuple[str, bytes]], head: bytes | None, check: Check | None) -> tuple[Findings, _Walk]:
    """The chain, signature and head problems of an index (files are `examine_files`' part)."""
    found, walk = Findings(), _Walk(check)
    for n, (name, data) in enumerate(segments):
        complete, torn = split_torn(data)
        if name != LEGACY_INDEX and n and walk.tail.seq + 1 != segment_start(name):
            found.problems.append(f"{name}: starts at seq {segment_start(name)}, but the segment before it ends at "
                                  f"seq {walk.tail.seq}: a segment was removed or added")
        for lineno, line in enumerate(complete.splitlines(), start=1):
            if line.strip():
                _entry(found, walk, f"{name} line {lineno}", line)
        if torn:
            found.problems.append(f"{name}: a partial last line ({len(torn)} bytes): a write to the index did not "
                                  "finish; the next record sets it aside")
    _signatures(found, walk)
    _head(found, walk, head, bool(segments) and segments[-1][0] != LEGACY_INDEX)
    return found, walk


def _entry(found: Findings, walk: _Walk, where: str, line: bytes) -> None:
    entry = parse(line)
    if entry is None:
        found.problems.append(f"{where}: not JSON (a damaged line, or a record glued onto a partial one)")
        walk.tail = walk.tail.after(line)
        walk.at_seq[walk.tail.seq] = walk.tail.prev_hash
        return
    checkpoint = is_checkpoint(entry)
    who = f"{where} (checkpoint)" if checkpoint else f"{where} (report of change {entry.get('change_id')})" \
        if is_report(entry) else f"{where} (run {entry.get('run_id')})"
    first = _range(entry)[0] if checkpoint else entry.get("seq", walk.tail.seq + 1)
    if entry.get("prev_hash") != walk.tail.prev_hash:
        found.problems.append(f"{who}: hash chain broken: a record before it was changed, removed or inserted")
    elif first != walk.tail.seq + 1:
        found.problems.append(f"{who}: seq {first} where {walk.tail.seq + 1} was expected: a record was removed "
                              "or inserted")
    if checkpoint:
        lo, hi = _range(entry)
        found.pruned += max(0, hi - lo + 1)
    else:
        if is_report(entry):
            found.reports += 1
        else:
            found.records += 1
        sizes = entry.get("sizes", {})
        for rel, digest in entry.get("files", {}).items():
            walk.listed[rel] = (digest, sizes.get(rel) if isinstance(sizes, dict) else None, who)
        if entry.get("evidence"):  # the file a step that started is writing (runbook.evidence.journal)
            walk.announced[str(entry["evidence"])] = entry
    if walk.check is not None:
        _signature(walk, who, entry)
    walk.tail = walk.tail.after(line, entry)
    walk.at_seq[walk.tail.seq] = walk.tail.prev_hash


def _signature(walk: _Walk, who: str, entry: dict[str, Any]) -> None:
    assert walk.check is not None
    signature = entry.get("signature")
    if not isinstance(signature, str):
        if walk.signed:
            walk.bad.append(f"{who}: not signed, after signed records: forged, or written without the signing key")
        else:
            walk.unsigned_before_first_signed += 1
        return
    walk.signed += 1
    why = walk.check(signed_bytes(entry), signature)
    if why is not None:
        walk.bad.append(f"{who}: signature does not verify ({why}): the record was edited or forged")


def _signatures(found: Findings, walk: _Walk) -> None:
    if walk.check is None:
        return
    found.problems += walk.bad
    if walk.unsigned_before_first_signed and walk.signed:
        found.notes.append(f"the first {walk.unsigned_before_first_signed} entries were written before a signing "
                           "key was configured: the signed entries after them cover them through the hash chain")
    elif walk.unsigned_before_first_signed:
        found.problems.append(f"no entry is signed ({walk.unsigned_before_first_signed} unsigned): this archive was "
                              "written without RUNBOOK_SIGNING_KEY, so its signatures cannot be checked")


def _head(found: Findings, walk: _Walk, head: bytes | None, segmented: bool) -> None:
    if head is None:
        if segmented:
            found.problems.append(f"{HEAD} is missing: records may have been dropped from the tail")
        elif found.records:
            found.notes.append(f"no {HEAD} (an archive from before the head was kept): records dropped from the tail "
                               "cannot be detected until the next record is added")
        return
    entry = parse(head)
    if entry is None or not isinstance(entry.get("seq"), int):
        found.problems.append(f"{HEAD} is damaged (not a head): records may have been dropped from the tail")
        return
    if walk.check is not None:
        signature = entry.get("signature")
        why = walk.check(signed_bytes(entry), signature) if isinstance(signature, str) else "it is not signed"
        if why is not None:
            found.problems.append(f"{HEAD}: signature does not verify ({why}): the head was replaced or written "
                                  "without the signing key; records may have been dropped from the tail")
    seq, want = entry["seq"], entry.get("hash")
    last = walk.tail.seq
    if seq > last:
        found.problems.append(f"records dropped from the tail: {HEAD} says the chain reaches seq {seq}, the index "
                              f"ends at seq {last}")
    elif walk.at_seq.get(seq, GENESIS if seq == 0 else None) != want:
        found.problems.append(f"{HEAD} names seq {seq} with hash {str(want)[:12]}..., the index holds another entry "
                              "there: records were replaced, or edited with the chain recomputed")
    elif seq < last:
        found.notes.append(f"{last - seq} record(s) after seq {seq}, where {HEAD} ends: a run stopped before it "
                           "updated the head (the next record updates it)")


def examine_files(found: Findings, walk: _Walk, digest: Digest, present: Iterable[tuple[str, int]]) -> None:
    """Listed files missing, empty, partial or altered; files no record lists; partial lines set aside.

    `present`: every file under the archive (relative path, size)."""
    for rel, (expected, size, who) in walk.listed.items():
        actual = digest(rel)
        if actual is None:
            found.problems.append(f"{who}: {rel} is missing")
        elif actual[0] == expected:
            if actual[1] == 0:
                found.problems.append(f"{who}: {rel} is 0 bytes (recorded empty: a run that wrote nothing)")
        elif actual[1] == 0:
            found.problems.append(f"{who}: {rel} is 0 bytes (the record says sha256 {expected[:12]}...)")
        elif size is not None and actual[1] < size:
            found.problems.append(f"{who}: {rel} is partial ({actual[1]} of {size} bytes)")
        else:
            found.problems.append(f"{who}: {rel} was altered (sha256 differs)")
    for rel, size in sorted(present):
        if rel in walk.listed:
            continue
        if rel.startswith(f"{INDEX_DIR}/") and rel.endswith(TORN_SUFFIX):
            found.problems.append(f"{rel}: a partial record ({size} bytes) that a write to the index did not finish, "
                                  "set aside; the record it held is not in the chain")
        elif not is_index_file(rel):
            empty = " (0 bytes: a run killed before it wrote it?)" if size == 0 else ""
            found.problems.append(f"{rel}: no record lists this file{empty}")


LIMITS_WITHOUT_KEY = ("not checked without RUNBOOK_ALLOWED_SIGNERS: an edit with the hash chain recomputed, a forged "
                      f"record appended, or records dropped from the tail together with {HEAD} pass; sign with "
                      "RUNBOOK_SIGNING_KEY and verify with RUNBOOK_ALLOWED_SIGNERS to detect them")
