"""runbook.server.configedit: in-place edits of redis.conf, diffs, backups and atomic writes (no server)."""

from __future__ import annotations

import difflib
import hashlib
import os
import stat

import pytest

from runbook.sandbox.throwaway import SEED_CONFIG
from runbook.server import configedit
from runbook.server.configedit import atomic_write, backup, directive_lines, edit_text, quote, unified_diff
from runbook.server.configfile import MASK, read_config, split_args


def active(text: str, name: str) -> list[tuple[int, str]]:
    """(index, line) of every uncommented line whose first word is `name` (case-insensitive)."""
    out = []
    for i, ln in enumerate(text.splitlines()):
        s = ln.strip()
        if s and not s.startswith("#") and s.split()[0].lower() == name:
            out.append((i, ln))
    return out


# --- quote ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes", "yes"),
        ("everysec", "everysec"),
        ("/var/lib/redis", "/var/lib/redis"),
        ("appendonly.aof", "appendonly.aof"),
        ("64mb", "64mb"),
        ("", '""'),
        ("my dump.rdb", '"my dump.rdb"'),
        ("tab\there", '"tab\there"'),
        ('say"hi', '"say\\"hi"'),
        ("it's", '"it\'s"'),
        ("back\\slash", '"back\\\\slash"'),
        ("\\x41", '"\\\\x41"'),
    ],
)
def test_quote(value, expected):
    assert quote(value) == expected


@pytest.mark.parametrize(
    "value",
    ["yes", "", "my dump.rdb", "  lead and trail  ", 'say "hi"', "it's", "back\\slash", "\\x41", "\\n",
     'mix \\ " \' end\\', "ünïcødé name"],
)
def test_quote_round_trips_through_split_args(value):
    assert split_args(f"dbfilename {quote(value)}") == ["dbfilename", value]


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "end\n"])
def test_quote_never_breaks_the_line(value):
    # The server reads the file line by line: a raw line break inside the quotes would cut the
    # directive in two (Redis's own rewrite escapes it as \n).
    q = quote(value)
    assert len(q.splitlines()) == 1
    assert split_args(f"dbfilename {q}") == ["dbfilename", value]


# --- directive_lines ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "value", "single", "expected"),
    [
        ("save", "3600 1 300 100 60 10000", True, ["save 3600 1", "save 300 100", "save 60 10000"]),
        ("save", "3600 1 300 100 60 10000", False, ["save 3600 1 300 100 60 10000"]),
        ("save", "900 1", True, ["save 900 1"]),
        ("save", "900 1", False, ["save 900 1"]),
        ("save", "", True, ['save ""']),
        ("save", "", False, ['save ""']),
        ("save", "   ", False, ['save ""']),
        ("appendonly", "yes", False, ["appendonly yes"]),
        ("appendfsync", "everysec", True, ["appendfsync everysec"]),
        ("dbfilename", "my dump.rdb", False, ['dbfilename "my dump.rdb"']),
        ("dir", "", False, ['dir ""']),
        ("appendfilename", 'a"b', False, ['appendfilename "a\\"b"']),
    ],
)
def test_directive_lines(name, value, single, expected):
    assert directive_lines(name, value, single) == expected


# --- edit_text: the seed's config -----------------------------------------------------------------

def test_seed_config_enable_aof_changes_exactly_two_lines_in_place():
    before = SEED_CONFIG
    after = edit_text(before, {"appendonly": "yes", "appendfsync": "everysec"})
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    i_aof = a.index("appendonly no\n")
    i_fsync = a.index("# appendfsync everysec\n")

    ops = [op for op in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes() if op[0] != "equal"]
    assert ops == [("replace", i_aof, i_aof + 1, i_aof, i_aof + 1),
                   ("replace", i_fsync, i_fsync + 1, i_fsync, i_fsync + 1)]
    assert b[i_aof] == "appendonly yes\n"
    assert b[i_fsync] == "appendfsync everysec\n"
    assert "# appendfsync always\n" in b
    assert "# appendfsync no\n" in b
    assert len(b) == len(a)
    assert [x for k, x in enumerate(b) if k not in (i_aof, i_fsync)] == \
           [x for k, x in enumerate(a) if k not in (i_aof, i_fsync)]
    assert after.endswith("\n") and not after.endswith("\n\n")


# --- edit_text: commented defaults ----------------------------------------------------------------

def test_commented_default_with_other_value_gets_new_line_right_after_it():
    before = "appendonly yes\n\n# appendfsync always\n\nno-appendfsync-on-rewrite no\n"
    after = edit_text(before, {"appendfsync": "everysec"})
    assert after == "appendonly yes\n\n# appendfsync always\nappendfsync everysec\n\nno-appendfsync-on-rewrite no\n"


def test_commented_default_with_same_value_is_replaced_not_duplicated():
    before = "# appendfsync always\n#appendfsync   everysec\n# appendfsync no\n"
    after = edit_text(before, {"appendfsync": "everysec"})
    assert after == "# appendfsync always\nappendfsync everysec\n# appendfsync no\n"


@pytest.mark.parametrize(
    ("before", "changes"),
    [
        ('# the same as "appendfsync no". In practical terms\n', {"appendfsync": "everysec"}),
        ("# save <seconds> <changes>\n", {"save": "900 1"}),
        ("# appendfsync <mode>\n", {"appendfsync": "everysec"}),
        ("# If unsure, use appendfsync everysec.\n", {"appendfsync": "everysec"}),
    ],
)
def test_prose_and_placeholders_are_not_commented_defaults(before, changes):
    after = edit_text(before, changes, stamp="S1")
    (name, value), = changes.items()
    # The prose line is kept as it is, and the setting goes to the end instead.
    assert after.startswith(before)
    tail = after[len(before):].splitlines()
    assert tail[-1] == directive_lines(name, value, False)[0]
    assert "runbook" in tail[-2]


# --- edit_text: duplicates and save ---------------------------------------------------------------

def test_duplicates_collapse_to_one_line_at_the_last_position():
    before = ("bind 127.0.0.1\n"
              "appendonly yes\n"
              "port 6379\n"
              "appendonly no\n"
              "dir /var/lib/redis\n"
              "appendonly no\n"
              "appendfilename x.aof\n")
    after = edit_text(before, {"appendonly": "yes"})
    assert after == ("bind 127.0.0.1\n"
                     "port 6379\n"
                     "dir /var/lib/redis\n"
                     "appendonly yes\n"
                     "appendfilename x.aof\n")


@pytest.mark.parametrize(
    ("single", "value", "new_lines"),
    [
        (True, "900 1 300 10", ["save 900 1", "save 300 10"]),
        (False, "900 1 300 10", ["save 900 1 300 10"]),
        (True, "", ['save ""']),
        (False, "", ['save ""']),
    ],
)
def test_save_lines_replaced_at_first_position(single, value, new_lines):
    before = ("# save <seconds> <changes>\n"
              "save 3600 1\n"
              "rdbcompression yes\n"
              "save 300 100\n"
              "dbfilename dump.rdb\n"
              "save 60 10000\n"
              "appendonly no\n")
    after = edit_text(before, {"save": value}, single_save_rule=single)
    assert after.splitlines() == ["# save <seconds> <changes>", *new_lines, "rdbcompression yes",
                                  "dbfilename dump.rdb", "appendonly no"]


# --- edit_text: appending -------------------------------------------------------------------------

@pytest.mark.parametrize("stamp", ["20240102T030405Z", ""])
def test_missing_directive_is_appended_under_a_header(stamp):
    before = "bind 127.0.0.1\nport 6379\n"
    after = edit_text(before, {"appendonly": "yes", "aof-use-rdb-preamble": "yes"}, stamp=stamp)
    assert after.startswith(before)
    tail = after[len(before):].splitlines()
    assert tail[0] == ""
    header = tail[1]
    assert header.startswith("#") and "runbook" in header
    if stamp:
        assert stamp in header
    else:
        assert "()" not in header
    assert tail[2:] == ["appendonly yes", "aof-use-rdb-preamble yes"]
    assert after.endswith("yes\n")


def test_only_missing_directives_are_appended():
    before = "appendonly no\n# appendfsync always\n"
    after = edit_text(before, {"appendonly": "yes", "appendfsync": "always", "dir": "/data"})
    assert after.splitlines()[:2] == ["appendonly yes", "appendfsync always"]
    assert after.splitlines()[-1] == "dir /data"
    assert len(after.splitlines()) == 5  # two edited, blank, header, dir


# --- edit_text: line endings ----------------------------------------------------------------------

def test_crlf_is_kept_on_every_line_including_new_ones():
    before = "appendonly no\r\n# appendfsync always\r\nport 6379\r\n"
    after = edit_text(before, {"appendonly": "yes", "appendfsync": "everysec", "dir": "/data"}, stamp="S")
    assert "\n" not in after.replace("\r\n", "")
    assert after.endswith("\r\n")
    assert after.split("\r\n")[:4] == ["appendonly yes", "# appendfsync always", "appendfsync everysec", "port 6379"]
    assert after.split("\r\n")[-2] == "dir /data"


def test_no_trailing_newline_is_kept_when_nothing_is_appended():
    assert edit_text("port 6379\nappendonly no", {"appendonly": "yes"}) == "port 6379\nappendonly yes"
    assert edit_text("appendonly no\r\nport 1", {"appendonly": "yes"}) == "appendonly yes\r\nport 1"


def test_no_trailing_newline_gets_one_when_lines_are_appended():
    after = edit_text("port 6379", {"appendonly": "yes"})
    assert after.startswith("port 6379\n")
    assert after.endswith("\nappendonly yes\n")


@pytest.mark.parametrize("odd", ["\x0c", "\x0b", "\x1c", "\x85", "\u2028"])
def test_odd_characters_in_untouched_lines_survive_byte_for_byte(odd):
    # The server splits lines on \n only; a form feed (^L page break) or similar in a comment is
    # not a line break and must come back unchanged.
    before = f"# section{odd}break\nappendonly no\n"
    assert edit_text(before, {"appendonly": "yes"}) == f"# section{odd}break\nappendonly yes\n"


def test_mixed_line_endings_untouched_lines_keep_their_own():
    before = "# from windows\r\nport 6379\nappendonly no\n"
    after = edit_text(before, {"appendonly": "yes"})
    assert after.startswith("# from windows\r\nport 6379\n")


# --- edit_text: names -----------------------------------------------------------------------------

def test_names_match_case_insensitively():
    before = "AppendOnly no\n#  APPENDFSYNC everysec\n"
    assert edit_text(before, {"appendonly": "yes", "appendfsync": "everysec"}) == \
        "appendonly yes\nappendfsync everysec\n"


def test_longer_names_with_the_same_start_are_not_touched():
    before = ("appendonlyfoo no\n"
              "appendfsync-x always\n"
              "# appendfsync-x everysec\n"
              "# appendonlyfoo yes\n")
    after = edit_text(before, {"appendonly": "yes", "appendfsync": "everysec"})
    assert after.startswith(before)
    assert after.splitlines()[-2:] == ["appendonly yes", "appendfsync everysec"]


# --- edit_text: what the server reads afterwards --------------------------------------------------

@pytest.mark.parametrize(
    ("changes", "single"),
    [
        ({"appendonly": "yes", "appendfsync": "everysec"}, False),
        ({"appendonly": "yes", "appendfsync": "always", "save": ""}, False),
        ({"save": "900 1 300 10"}, True),
        ({"save": "900 1 300 10"}, False),
        ({"dbfilename": "my dump.rdb", "dir": "/var/lib/my redis"}, False),
        ({"appendfilename": 'odd "name".aof', "aof-use-rdb-preamble": "no"}, False),
    ],
)
def test_read_config_sees_the_desired_values(tmp_path, changes, single):
    path = tmp_path / "redis.conf"
    path.write_text(edit_text(SEED_CONFIG, changes, single_save_rule=single), newline="")
    cfg = read_config(path)
    for name, value in changes.items():
        assert cfg.value(name, single_save_rule=single) == value, name


# --- edit_text: idempotence -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("before", "changes", "single"),
    [
        (SEED_CONFIG, {"appendonly": "yes", "appendfsync": "everysec"}, False),
        (SEED_CONFIG, {"save": "900 1 300 10", "dbfilename": "my dump.rdb"}, True),
        (SEED_CONFIG, {"save": "900 1 300 10"}, False),
        (SEED_CONFIG, {"save": ""}, False),
        ("# appendfsync always\nport 1", {"appendfsync": "everysec", "dir": "/d"}, False),
        ("a 1\r\nappendonly no\r\nappendonly no\r\n", {"appendonly": "yes", "x-new": "v w"}, False),
    ],
)
def test_edit_is_idempotent(before, changes, single):
    once = edit_text(before, changes, single_save_rule=single, stamp="S")
    assert once != before
    assert edit_text(once, changes, single_save_rule=single, stamp="S") == once


# --- unified_diff ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("secret_line", "secret"),
    [
        ("requirepass s3cr3t-Pa55", "s3cr3t-Pa55"),
        ('requirepass "quoted s3cret"', "quoted s3cret"),
        ("masterauth s3cr3t-Auth", "s3cr3t-Auth"),
    ],
)
def test_unified_diff_shows_the_change_and_masks_secrets(secret_line, secret):
    before = f"port 6379\n{secret_line}\nappendonly no\n{secret_line}\nappendfilename x.aof\n"
    after = edit_text(before, {"appendonly": "yes"})
    diff = unified_diff(before, after, "/etc/redis/redis.conf")
    lines = diff.splitlines()
    assert "-appendonly no" in lines
    assert "+appendonly yes" in lines
    assert any(ln.startswith("--- /etc/redis/redis.conf") for ln in lines)
    assert any(ln.startswith("+++ /etc/redis/redis.conf") for ln in lines)
    assert secret not in diff
    assert sum(MASK in ln for ln in lines if ln.startswith(" ")) == 2  # both context lines masked


def test_unified_diff_of_identical_texts_is_empty():
    assert unified_diff(SEED_CONFIG, SEED_CONFIG, "redis.conf") == ""


def test_unified_diff_without_trailing_newline_keeps_lines_apart():
    before = "port 6379\nappendonly no"
    diff = unified_diff(before, edit_text(before, {"appendonly": "yes"}), "redis.conf")
    lines = diff.splitlines()
    assert "-appendonly no" in lines
    assert "+appendonly yes" in lines


# --- backup ---------------------------------------------------------------------------------------

def test_backup_copies_bytes_and_mode_beside_the_file(tmp_path):
    path = tmp_path / "redis.conf"
    data = b"appendonly no\r\n# caf\xc3\xa9\nrequirepass x\n"
    path.write_bytes(data)
    path.chmod(0o640)
    dest, digest = backup(path, "20240102T030405Z", "c0ffee123456")
    assert dest == tmp_path / "redis.conf.runbook-c0ffee123456-20240102T030405Z.bak"  # the change id in its name
    assert dest.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert path.read_bytes() == data
    assert backup(path, "20240102T030405Z")[0].name == "redis.conf.runbook-manual-20240102T030405Z.bak"


def test_backup_never_overwrites_a_file(tmp_path):
    """Two changes in the same second once named the same backup, and the second copy (appendonly yes) replaced
    the original: a backup is created with O_EXCL, so an existing file is never touched."""
    path = tmp_path / "redis.conf"
    path.write_text("appendonly yes\n")
    taken = tmp_path / "redis.conf.runbook-c1-S.bak"
    taken.write_text("appendonly no\n")
    with pytest.raises(FileExistsError):
        backup(path, "S", "c1")
    assert taken.read_text() == "appendonly no\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_backup_keeps_the_owner(tmp_path):
    path = tmp_path / "redis.conf"
    path.write_text("appendonly no\n")
    os.chown(path, 1, 1)
    dest, _ = backup(path, "S")
    assert (dest.stat().st_uid, dest.stat().st_gid) == (1, 1)


# --- atomic_write ---------------------------------------------------------------------------------

def test_atomic_write_replaces_content_and_keeps_mode_and_owner(tmp_path):
    path = tmp_path / "redis.conf"
    path.write_text("appendonly no\n")
    path.chmod(0o640)
    root = os.geteuid() == 0
    if root:
        os.chown(path, 1, 1)
    owner = (path.stat().st_uid, path.stat().st_gid)
    atomic_write(path, "appendonly yes\r\nno-newline-translation\n")
    assert path.read_bytes() == b"appendonly yes\r\nno-newline-translation\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert (path.stat().st_uid, path.stat().st_gid) == owner
    if root:
        assert owner == (1, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redis.conf"]


def test_atomic_write_round_trips_undecodable_bytes(tmp_path):
    path = tmp_path / "redis.conf"
    path.write_bytes(b"# \xff\xfe latin junk\nappendonly no\n")
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    atomic_write(path, text.replace("appendonly no", "appendonly yes"))
    assert path.read_bytes() == b"# \xff\xfe latin junk\nappendonly yes\n"


def test_atomic_write_failing_encode_leaves_original_and_no_temp(tmp_path):
    path = tmp_path / "redis.conf"
    path.write_bytes(b"appendonly no\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(path, "appendonly yes\n# \ud800\n")  # not a surrogateescape byte: cannot encode
    assert path.read_bytes() == b"appendonly no\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redis.conf"]


def test_atomic_write_failing_rename_leaves_original_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "redis.conf"
    path.write_bytes(b"appendonly no\n")

    def boom(src, dst):
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(configedit.os, "replace", boom)
    with pytest.raises(OSError, match="busy"):
        atomic_write(path, "appendonly yes\n")
    assert path.read_bytes() == b"appendonly no\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redis.conf"]
