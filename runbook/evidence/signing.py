"""OpenSSH signatures over index entries, the way git signs commits (`ssh-keygen -Y sign` / `-Y verify`).

The signing key's path comes from $RUNBOOK_SIGNING_KEY (a private key, or a public key whose private
half is in ssh-agent), never from a parameter: parameters end up in the evidence. Verification reads
an allowed-signers file (ssh-keygen(1), ALLOWED SIGNERS) from $RUNBOOK_ALLOWED_SIGNERS.

ssh-keygen decides whether a key may sign (principal, namespace, validity): once per distinct key.
The key's further signatures are checked with the same call, or, for ed25519 keys when the
`cryptography` package is installed, in this process (about 0.1 ms instead of a 5 ms subprocess),
after ssh-keygen and this process agreed on one signature by that key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from runbook.errors import ArchiveError, ParameterError

SIGNING_KEY_ENV = "RUNBOOK_SIGNING_KEY"
ALLOWED_SIGNERS_ENV = "RUNBOOK_ALLOWED_SIGNERS"
NAMESPACE = "runbook-archive"
TIMEOUT_S = 30


def _ssh_keygen(args: list[str], data: bytes, what: str) -> subprocess.CompletedProcess[bytes]:
    """`ssh-keygen ARGS` with `data` on stdin, detached from the terminal (a passphrase prompt fails, not hangs)."""
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise ParameterError(f"{what}: ssh-keygen is not installed (apt-get install openssh-client)")
    try:
        return subprocess.run([tool, *args], input=data, capture_output=True, timeout=TIMEOUT_S,
                              start_new_session=True, check=False)
    except subprocess.TimeoutExpired as err:
        raise ArchiveError(f"{what}: ssh-keygen did not answer within {TIMEOUT_S} s") from err


def _first_line(raw: bytes) -> str:
    text = raw.decode(errors="replace").strip()
    return text.splitlines()[0] if text else "no message"


@dataclass(frozen=True)
class Signer:
    """Signs with the key at $RUNBOOK_SIGNING_KEY."""

    key: Path

    @classmethod
    def from_env(cls) -> Signer | None:
        """The configured signer (None when $RUNBOOK_SIGNING_KEY is unset); ParameterError when it cannot sign."""
        value = os.environ.get(SIGNING_KEY_ENV, "")
        if not value:
            return None
        key = Path(value)
        if not key.is_file() or not os.access(key, os.R_OK):
            raise ParameterError(f"{SIGNING_KEY_ENV}={value}: no readable key file there; point it at the OpenSSH "
                                 "key that signs the evidence (ssh-keygen -t ed25519 -f KEY), or unset it. "
                                 "Nothing was run.")
        signer = cls(key)
        try:
            signer.sign(b"runbook signing check\n")
        except ArchiveError as err:
            raise ParameterError(f"{err}; use a key without a passphrase, or a .pub whose private key is in "
                                 "ssh-agent. Nothing was run.") from err
        return signer

    def sign(self, message: bytes) -> str:
        """The armored signature of `message` (ArchiveError when ssh-keygen refuses)."""
        what = f"{SIGNING_KEY_ENV}={self.key}"
        done = _ssh_keygen(["-q", "-Y", "sign", "-f", str(self.key), "-n", NAMESPACE], message, what)
        out = done.stdout.decode(errors="replace")
        if done.returncode != 0 or "BEGIN SSH SIGNATURE" not in out:
            raise ArchiveError(f"{what}: ssh-keygen could not sign with it ({_first_line(done.stderr)})")
        return out.strip()


def _read_string(blob: bytes, at: int) -> tuple[bytes, int]:
    (n,) = struct.unpack(">I", blob[at:at + 4])
    end = at + 4 + n
    if end > len(blob):
        raise ValueError("truncated")
    return blob[at + 4:end], end


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


@dataclass(frozen=True)
class _Parsed:
    public_key: bytes
    namespace: bytes
    reserved: bytes
    hash_algorithm: bytes
    signature: bytes


def _parse(armored: str) -> _Parsed:
    """The fields of an SSHSIG blob (PROTOCOL.sshsig); ValueError when it is not one."""
    body = "".join(ln for ln in armored.strip().splitlines() if not ln.startswith("-----"))
    blob = base64.b64decode(body, validate=True)
    if blob[:6] != b"SSHSIG" or struct.unpack(">I", blob[6:10])[0] != 1:
        raise ValueError("not an SSHSIG v1 signature")
    at, parts = 10, []
    for _ in range(5):
        part, at = _read_string(blob, at)
        parts.append(part)
    return _Parsed(*parts)


def _ed25519_ok(parsed: _Parsed, message: bytes) -> bool | None:
    """The in-process check of an ed25519 signature; None when it cannot be done here."""
    try:
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415  (optional: the fast path only)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415
    except ImportError:
        return None
    try:
        kind, at = _read_string(parsed.public_key, 0)
        raw_key, _ = _read_string(parsed.public_key, at)
        sig_kind, at = _read_string(parsed.signature, 0)
        raw_sig, _ = _read_string(parsed.signature, at)
    except (ValueError, struct.error):
        return False
    hashes = {b"sha512": hashlib.sha512, b"sha256": hashlib.sha256}
    if kind != b"ssh-ed25519" or sig_kind != b"ssh-ed25519" or parsed.hash_algorithm not in hashes:
        return None
    if parsed.namespace != NAMESPACE.encode():
        return False
    signed = (b"SSHSIG" + _string(parsed.namespace) + _string(parsed.reserved) + _string(parsed.hash_algorithm)
              + _string(hashes[parsed.hash_algorithm](message).digest()))
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(raw_sig, signed)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass
class Verifier:
    """Checks signatures against the allowed-signers file at $RUNBOOK_ALLOWED_SIGNERS."""

    allowed: Path
    _principal: dict[bytes, str] = field(default_factory=dict)  # key blob -> principal ("" : not allowed)
    _fast: dict[bytes, bool] = field(default_factory=dict)  # key blob -> the in-process check agreed

    @classmethod
    def from_env(cls) -> Verifier | None:
        value = os.environ.get(ALLOWED_SIGNERS_ENV, "")
        if not value:
            return None
        if not Path(value).is_file() or not os.access(value, os.R_OK):
            raise ParameterError(f"{ALLOWED_SIGNERS_ENV}={value}: no readable allowed-signers file there (one line "
                                 "per key: `PRINCIPAL namespaces=\"runbook-archive\" ssh-ed25519 AAAA...`)")
        return cls(Path(value))

    def check(self, message: bytes, signature: str) -> str | None:
        """None when `signature` is a good signature of `message` by an allowed key, else why not."""
        try:
            parsed = _parse(signature)
        except (ValueError, struct.error):
            return "not an SSH signature"
        key = parsed.public_key
        if self._fast.get(key):
            ok = _ed25519_ok(parsed, message)
            if ok is not None:
                return None if ok else "the signature does not match the entry"
        principal = self._principal.get(key)
        if principal is None:
            principal = self._find_principal(signature)
            self._principal[key] = principal
        if not principal:
            return f"signed by a key that {self.allowed} does not allow"
        with tempfile.NamedTemporaryFile("w", suffix=".sig") as sig:
            sig.write(signature + "\n")
            sig.flush()
            done = _ssh_keygen(["-Y", "verify", "-f", str(self.allowed), "-I", principal, "-n", NAMESPACE,
                                "-s", sig.name], message, f"{ALLOWED_SIGNERS_ENV}={self.allowed}")
        if done.returncode != 0:
            return _first_line(done.stderr)
        if key not in self._fast:
            self._fast[key] = _ed25519_ok(parsed, message) is True
        return None

    def _find_principal(self, signature: str) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".sig") as sig:
            sig.write(signature + "\n")
            sig.flush()
            done = _ssh_keygen(["-Y", "find-principals", "-f", str(self.allowed), "-s", sig.name], b"",
                               f"{ALLOWED_SIGNERS_ENV}={self.allowed}")
        found = done.stdout.decode(errors="replace").split()
        return found[0] if done.returncode == 0 and found else ""
