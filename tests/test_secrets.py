"""No password reaches the evidence, whichever way the server holds it and whatever the run shows.

The server's config file holds three secrets: `requirepass`, `masterauth` and an ACL `user` line.
The whole change (which rewrites the file and shows its diff) and its rollback (which shows the diff
back) run against it; then every archived file is searched for each secret and for the SHA-256 form
that CONFIG REWRITE writes for ACL passwords.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers import index, run_json

from runbook.sandbox.throwaway import SEED_CONFIG

pytestmark = pytest.mark.notebook

REQUIREPASS = "Rq-4f1c-not-in-evidence"
MASTERAUTH = "Ma-77b2-not-in-evidence"
ACL_PASSWORD = "Acl-0d9e-not-in-evidence"


def test_change_and_rollback_leave_no_secret_in_evidence(default_binary: Path, make_sandbox, tmp_path: Path) -> None:
    config = SEED_CONFIG + f"\nmasterauth {MASTERAUTH}\nuser ops on >{ACL_PASSWORD} ~* &* +@all\n"
    sb = make_sandbox(default_binary, config=config, password=REQUIREPASS)
    sb.client().set("k", "v")
    env = {"REDIS_PASSWORD": REQUIREPASS}
    archive = tmp_path / "archive"
    rc, out, err = run_json(archive, "all", "-p", "target", sb.url, "-p", "apply", "true",
                            "-p", "destination", str(tmp_path / "backups"), env=env)
    assert rc == 0, err
    assert "appendonly yes" in sb.config_path.read_text()
    rc, out, err = run_json(archive, "rollback", "-p", "target", sb.url, "-p", "apply", "true", env=env)
    assert rc == 0, err
    assert [r["notebook"] for r in index(archive)][-1] == "rollback"
    assert sb.client().config_get("appendonly")["appendonly"] == "no"

    secrets = [REQUIREPASS, MASTERAUTH, ACL_PASSWORD, hashlib.sha256(ACL_PASSWORD.encode()).hexdigest()]
    # The secrets really are where a careless run would copy them from.
    file_text = sb.config_path.read_text() + "".join(p.read_text() for p in sb.config_path.parent.glob("redis.conf*"))
    assert REQUIREPASS in file_text and MASTERAUTH in file_text
    leaks = [(p.name, s) for p in archive.rglob("*") if p.is_file()
             for s in secrets if s in p.read_text(errors="replace")]
    assert leaks == []
    # And the evidence does show the diffs, masked.
    for step in ("persist-config", "rollback"):
        html = "".join(p.read_text() for p in archive.rglob(f"*{step}*.html"))
        assert "appendonly yes" in html, step
    # The lines that hold the secrets are in the diff, masked: without the mask this test would fail.
    html = "".join(p.read_text() for p in archive.rglob("*persist-config*.html"))
    assert "masterauth ********" in html and "requirepass ********" in html and "user ops on #********" in html
