"""TLS for `rediss://` targets: the files a client needs, checked before any server is touched, and what a
failed handshake means.

A key file's path is not a secret and may be a parameter; its contents are never read here (redis-py's
`ssl` module loads it when it connects).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import redis

from runbook.errors import ParameterError

#: The connection parameters that name TLS files, and what each holds.
TLS_FILES = {
    "tls_ca_file": "CA bundle",
    "tls_cert_file": "client certificate",
    "tls_key_file": "client private key",
}
#: What redis-py calls each of them.
_REDIS_PY = {"tls_ca_file": "ssl_ca_certs", "tls_cert_file": "ssl_certfile", "tls_key_file": "ssl_keyfile"}


def check_tls_parameters(target: str, values: Mapping[str, Any]) -> None:
    """Refuse TLS files for a target that is not `rediss://`, a key without its certificate, and a file that is
    missing or unreadable (ParameterError, exit 2), so that nothing is sent before the files are right."""
    given = {name: str(values[name]) for name in TLS_FILES if values.get(name)}
    if not given:
        return
    names = ", ".join(given)
    scheme = "sandbox" if target == "sandbox" else f"{urlparse(target).scheme}://"
    if scheme != "rediss://":
        what = "a throwaway server without TLS" if target == "sandbox" else target
        raise ParameterError(f"{names} {'is' if len(given) == 1 else 'are'} set but the target is {scheme} "
                             f"({what}): TLS files apply to rediss:// targets only. Use rediss://host:port/db, "
                             f"or drop {names}.")
    if "tls_key_file" in given and "tls_cert_file" not in given:
        raise ParameterError("tls_key_file is set without tls_cert_file: pass the client certificate it belongs "
                             "to as tls_cert_file (or drop tls_key_file).")
    for name, value in given.items():
        path = Path(value).expanduser()
        what = f"{name} {value} ({TLS_FILES[name]})"
        if not path.exists():
            raise ParameterError(f"{what} does not exist. Point {name} at the PEM file (an absolute path; relative "
                                 f"paths are read from {Path.cwd()}).")
        if not path.is_file():
            raise ParameterError(f"{what} is not a file. Point {name} at a PEM file.")
        if not os.access(path, os.R_OK):
            raise ParameterError(f"{what} is not readable by this user (uid {os.geteuid()}). Give it read access, "
                                 "or run as a user who may read it.")


def tls_options(url: str, values: Mapping[str, Any]) -> dict[str, str]:
    """redis-py's `ssl_*` keywords for the TLS files given (none for a target that is not rediss://)."""
    if not url.startswith("rediss://"):
        return {}
    return {_REDIS_PY[name]: str(Path(str(values[name])).expanduser()) for name in TLS_FILES if values.get(name)}


def tls_failure(err: redis.ConnectionError, values: Mapping[str, Any]) -> str:
    """What a failed TLS connection means and what to do, or "" when `err` is not about TLS."""
    text = f"{err} {err.__context__ or ''}"
    cert = str(values.get("tls_cert_file") or "")
    if "EOF occurred in violation of protocol" in text or "alert certificate required" in text:
        if not cert:
            return ("the server closed the TLS connection: it requires a client certificate (tls-auth-clients yes). "
                    "Pass tls_cert_file and tls_key_file: a certificate and key signed by a CA the server trusts "
                    "(its tls-ca-cert-file).")
        return (f"the server closed the TLS connection: it did not accept the client certificate tls_cert_file "
                f"{cert}. Check that it is signed by a CA in the server's tls-ca-cert-file and has not expired.")
    if "alert unknown ca" in text or "alert bad certificate" in text:
        return (f"the server refused the client certificate tls_cert_file {cert}: it is not signed by a CA in the "
                "server's tls-ca-cert-file.")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        ca = str(values.get("tls_ca_file") or "")
        source = f"tls_ca_file {ca}" if ca else "the system's CA bundle (tls_ca_file is empty)"
        return (f"the server's certificate was not accepted ({_reason(text)}): it is not signed by a CA in "
                f"{source}, or does not name the target's host. Point tls_ca_file at the CA that signed it.")
    if "KEY_VALUES_MISMATCH" in text:
        return (f"tls_key_file {values.get('tls_key_file')} is not the key of tls_cert_file {cert}: pass the key "
                "that belongs to the certificate.")
    if "PEM lib" in text or "[SSL]" in text:
        return (f"the client certificate or key could not be loaded ({_reason(text)}): tls_cert_file {cert} must be "
                "a PEM certificate, and tls_key_file its PEM key without a passphrase (or the key inside "
                "tls_cert_file).")
    return ""


def _reason(text: str) -> str:
    """The OpenSSL reason inside a redis-py error text, without its source location."""
    for marker in ("certificate verify failed: ", "[SSL] ", "[SSL: "):
        if marker in text:
            return text.split(marker, 1)[1].split(" (_ssl.c", 1)[0].rstrip(".")
    return text.strip()
