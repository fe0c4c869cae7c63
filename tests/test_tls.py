"""rediss:// targets: the TLS files checked before anything is sent, and mutual TLS against a real server that
requires client certificates (tls-auth-clients yes)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import binary_or_skip
from helpers import run_json

from runbook.errors import ParameterError, PreconditionFailed
from runbook.sandbox.throwaway import SEED_CONFIG, SandboxTls
from runbook.server.tls import check_tls_parameters


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certs(where: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, as PEM files in `where`."""
    where.mkdir(parents=True, exist_ok=True)
    f = {name: where / name for name in ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=runbook test CA",
             "-keyout", str(f["ca.key"]), "-out", str(f["ca.crt"]))
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=runbook")):
        csr = where / f"{who}.csr"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(f[f"{who}.key"]),
                 "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(f["ca.crt"]), "-CAkey", str(f["ca.key"]),
                 "-CAcreateserial", "-days", "2", "-out", str(f[f"{who}.crt"]),
                 *(["-extfile", str(where / "san.ext")] if who == "server" else []))
    return f


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


def mtls_sandbox(make_sandbox, label: str, certs: dict[str, Path]):
    """A server of `label` on a TLS port only, requiring client certificates; skipped where it has no TLS."""
    binary = binary_or_skip(label)
    tls = SandboxTls(certs["ca.crt"], certs["server.crt"], certs["server.key"], certs["client.crt"],
                     certs["client.key"])
    try:
        return make_sandbox(binary, config=SEED_CONFIG + "tls-auth-clients yes\n", tls=tls)
    except PreconditionFailed as err:
        if label != "redis-7" and ("TLS" in str(err) or "tls-port" in str(err)):
            pytest.skip(f"{label} ({binary}) is built without TLS: {str(err).splitlines()[-1]}")
        raise


def _args(sb, certs: dict[str, Path], *names: str) -> list[str]:
    files = {"tls_ca_file": "ca.crt", "tls_cert_file": "client.crt", "tls_key_file": "client.key"}
    args = ["inspect", "-p", "target", sb.url]
    for name in names:
        args += ["-p", name, str(certs[files[name]])]
    return args


@pytest.mark.notebook
@pytest.mark.parametrize("label", ["redis-7", "valkey-9"])
def test_mutual_tls_inspect(label: str, make_sandbox, certs, clean_env, tmp_path: Path) -> None:
    sb = mtls_sandbox(make_sandbox, label, certs)
    assert sb.url.startswith("rediss://") and sb.client().config_get("tls-auth-clients")["tls-auth-clients"] == "yes"

    rc, out, err = run_json(tmp_path / "a", *_args(sb, certs, "tls_ca_file", "tls_cert_file", "tls_key_file"))
    step = out["steps"][0]
    assert rc in (0, 1) and step["status"] in ("pass", "warn", "fail"), (err, step["summary"].get("error"))
    assert not step["summary"].get("error") and step["summary"]["checks"]["aof_enabled"]["status"] == "warn"
    assert step["summary"]["server"] in ("redis", "valkey")

    rc, out, err = run_json(tmp_path / "b", *_args(sb, certs, "tls_ca_file"))  # no client certificate
    error = out["steps"][0]["summary"]["error"]
    assert rc == 1 and out["steps"][0]["status"] == "error"
    for words in ("requires a client certificate", "tls-auth-clients", "tls_cert_file", "tls_key_file"):
        assert words in error, error
    assert "BEGIN" not in error + err  # no key or certificate material in the message


@pytest.mark.parametrize("problem, expected", [
    ("missing", "tls_ca_file {d}/nope.pem (CA bundle) does not exist"),
    ("plain", "tls_ca_file is set but the target is redis:// (redis://127.0.0.1:{port}/0): TLS files apply to "
              "rediss:// targets only. Use rediss://"),
    ("key-only", "tls_key_file is set without tls_cert_file"),
])
def test_bad_tls_files_exit_2_before_any_server_is_touched(problem: str, expected: str, default_binary: Path,
                                                          make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    client = sb.client()
    before = int(client.info("stats")["total_connections_received"])
    key = tmp_path / "client.key"
    key.write_text("not a key")
    params = {
        "missing": ["-p", "target", sb.url.replace("redis://", "rediss://"), "-p", "tls_ca_file",
                    str(tmp_path / "nope.pem")],
        "plain": ["-p", "target", sb.url, "-p", "tls_ca_file", str(key)],
        "key-only": ["-p", "target", sb.url.replace("redis://", "rediss://"), "-p", "tls_key_file", str(key)],
    }[problem]
    rc, out, err = run_json(tmp_path / "archive", "inspect", *params)
    assert rc == 2 and out == {}
    assert expected.format(d=tmp_path, port=sb.port) in err
    assert "Traceback" not in err and "not a key" not in err
    assert not (tmp_path / "archive").exists()
    assert int(client.info("stats")["total_connections_received"]) == before  # nothing connected meanwhile


@pytest.mark.parametrize("target, files, message", [
    ("sandbox", {"tls_ca_file": "ca.crt"}, "the target is sandbox (a throwaway server without TLS)"),
    ("unix:///run/redis.sock", {"tls_cert_file": "client.crt", "tls_key_file": "client.key"},
     "tls_cert_file, tls_key_file are set but the target is unix://"),
    ("rediss://h:6380/0", {"tls_ca_file": "."}, "tls_ca_file . (CA bundle) is not a file"),
    ("rediss://h:6380/0", {"tls_cert_file": "client.crt", "tls_key_file": "gone.key"},
     "tls_key_file gone.key (client private key) does not exist"),
])
def test_check_tls_parameters_refuses(target: str, files: dict[str, str], message: str, certs, monkeypatch) -> None:
    monkeypatch.chdir(certs["ca.crt"].parent)
    with pytest.raises(ParameterError) as err:
        check_tls_parameters(target, files)
    assert message in str(err.value)


def test_check_tls_parameters_accepts(certs) -> None:
    check_tls_parameters("rediss://h:6380/0", {"tls_ca_file": str(certs["ca.crt"]), "tls_cert_file":
                                               str(certs["client.crt"]), "tls_key_file": str(certs["client.key"])})
    check_tls_parameters("redis://h:6379/0", {"tls_ca_file": "", "tls_cert_file": ""})  # none given: nothing to check
