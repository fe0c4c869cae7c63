"""runbook.server.configfile: redis.conf parsing (quoting, include, last one wins) and secret masking."""

from __future__ import annotations

import pytest

from runbook.errors import PreconditionFailed
from runbook.server.configfile import MASK, mask_secrets, read_config, split_args

# --- split_args ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("appendonly yes", ["appendonly", "yes"]),
        ("  save   3600 1\t300 100  ", ["save", "3600", "1", "300", "100"]),
        ('dir "/var/lib/my redis"', ["dir", "/var/lib/my redis"]),
        ('x "a\\nb"', ["x", "a\nb"]),
        ('x "\\x41\\x6a"', ["x", "Aj"]),
        ('x "say \\"hi\\""', ["x", 'say "hi"']),
        ('x "tab\\there"', ["x", "tab\there"]),
        ('x "back\\\\slash"', ["x", "back\\slash"]),
        ("x 'single quoted'", ["x", "single quoted"]),
        ("x 'no \\n escape'", ["x", "no \\n escape"]),
        ("x 'it\\'s'", ["x", "it's"]),
        ('save ""', ["save", ""]),
        ("", []),
        ("   ", []),
    ],
)
def test_split_args(line, expected):
    assert split_args(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        'dir "/var/lib/redis',
        "dir '/var/lib/redis",
        'x "a\\"',  # the escaped quote does not close the string
        'x "a"b',  # a closing quote must be followed by a space
        "x 'a'b",
    ],
)
def test_split_args_rejects_unbalanced_or_glued_quotes(line):
    with pytest.raises(ValueError):
        split_args(line)


def test_split_args_quote_inside_a_word_starts_quoting_like_the_server():
    # Checked on redis-server 7.0.15: `dbfilename foo"bar baz"` gives CONFIG GET dbfilename -> "foobar baz"
    # (sdssplitargs opens a quote anywhere in an unquoted word, not only at its start).
    assert split_args('dbfilename foo"bar baz"') == ["dbfilename", "foobar baz"]


# --- read_config ----------------------------------------------------------------------------------

def write(path, text):
    path.write_text(text)
    return path


def test_read_config_skips_comments_and_blank_lines_and_lowercases_names(tmp_path):
    conf = write(
        tmp_path / "redis.conf",
        "# a comment\n\n   # indented comment\nAppendOnly yes\n\t\nDIR /data\n# appendfsync always\n",
    )
    cfg = read_config(conf)
    assert [d.name for d in cfg.directives] == ["appendonly", "dir"]
    assert cfg.value("appendonly") == "yes"
    assert cfg.value("dir") == "/data"
    assert cfg.value("appendfsync") is None  # commented out: not set
    assert [d.lineno for d in cfg.directives] == [4, 6]
    assert cfg.files == (conf,)


def test_read_config_last_duplicate_wins(tmp_path):
    conf = write(tmp_path / "redis.conf", "appendonly no\nport 6379\nappendonly yes\n")
    cfg = read_config(conf)
    assert cfg.value("appendonly") == "yes"
    assert cfg.last("appendonly").lineno == 3


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["save 3600 1", "save 300 100", "save 60 10000"], "3600 1 300 100 60 10000"),
        (["save 3600 1 300 100", "save 60 10000"], "3600 1 300 100 60 10000"),
        (["save 3600 1", 'save ""'], ""),
        (["save 3600 1", 'save ""', "save 60 5"], "60 5"),
        (["port 6379"], None),
    ],
)
def test_read_config_save_lines_accumulate_and_empty_clears(tmp_path, lines, expected):
    conf = write(tmp_path / "redis.conf", "\n".join(lines) + "\n")
    assert read_config(conf).value("save") == expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["save 3600 1 300 100 60 10000"], ""),  # 6.x ignores the line, but it still drops the defaults
        (["save 3600 1 300 100", "save 60 10000"], "60 10000"),
        (["save 900 1", "save 300 10"], "900 1 300 10"),
        (["save 900 1", 'save ""', "save 60 5"], "60 5"),
    ],
)
def test_read_config_save_lines_as_redis_6(tmp_path, lines, expected):
    conf = write(tmp_path / "redis.conf", "\n".join(lines) + "\n")
    assert read_config(conf).value("save", single_save_rule=True) == expected


def test_read_config_relative_include_overrides_earlier_and_is_overridden_by_later(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the server resolves relative includes against its working directory
    write(tmp_path / "local.conf", "appendonly yes\nappendfsync always\n")
    conf = write(
        tmp_path / "redis.conf",
        "appendonly no\nappendfsync everysec\ninclude local.conf\nappendfsync no\n",
    )
    cfg = read_config(conf)
    assert cfg.value("appendonly") == "yes"  # the include overrides the earlier line
    assert cfg.value("appendfsync") == "no"  # the later line overrides the include
    assert cfg.files == (conf, tmp_path / "local.conf")
    assert cfg.last("appendonly").file == tmp_path / "local.conf"


def test_read_config_glob_include_reads_matches_in_sorted_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d" / "20-b.conf", "appendfsync always\nmaxmemory 2mb\n")
    write(tmp_path / "conf.d" / "10-a.conf", "appendfsync no\nappendonly yes\nmaxmemory 1mb\n")
    write(tmp_path / "conf.d" / "ignored.txt", "appendonly no\n")
    conf = write(
        tmp_path / "redis.conf",
        "appendonly no\nmaxmemory 0\ninclude conf.d/*.conf\nmaxmemory 3mb\n",
    )
    cfg = read_config(conf)
    assert cfg.value("appendfsync") == "always"  # 20-b is read after 10-a
    assert cfg.value("appendonly") == "yes"  # 10-a overrides the main file's earlier line
    assert cfg.value("maxmemory") == "3mb"  # the later main-file line overrides both includes
    assert cfg.files == (conf, tmp_path / "conf.d" / "10-a.conf", tmp_path / "conf.d" / "20-b.conf")


def test_read_config_absolute_include(tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    write(other / "x.conf", "appendonly yes\n")
    conf = write(tmp_path / "redis.conf", f"appendonly no\ninclude {other / 'x.conf'}\n")
    assert read_config(conf).value("appendonly") == "yes"


def test_read_config_relative_include_after_dir_resolves_in_dir(tmp_path, monkeypatch):
    # Checked on redis-server 7.0.15: `dir` makes the server chdir, so a relative include after a
    # `dir` line is read from that dir, not from the config file's directory.
    data, etc, cwd = tmp_path / "data", tmp_path / "etc", tmp_path / "cwd"
    for d in (data, etc, cwd):
        d.mkdir()
    monkeypatch.chdir(cwd)
    write(data / "inc.conf", "dbfilename fromdata.rdb\n")
    write(etc / "inc.conf", "dbfilename frometc.rdb\n")
    conf = write(etc / "redis.conf", f"dir {data}\ninclude inc.conf\n")
    assert read_config(conf).value("dbfilename") == "fromdata.rdb"


@pytest.mark.parametrize(
    "files",
    [
        {"redis.conf": "include redis.conf\n"},
        {"redis.conf": "port 1\ninclude b.conf\n", "b.conf": "include redis.conf\n"},
        {"redis.conf": "include b.conf\n", "b.conf": "include c.conf\n", "c.conf": "include b.conf\n"},
    ],
    ids=["self", "two-files", "inner-cycle"],
)
def test_read_config_include_cycle_raises(tmp_path, monkeypatch, files):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(PreconditionFailed, match="includes itself"):
        read_config(tmp_path / "redis.conf")


def test_read_config_same_file_included_twice_is_not_a_cycle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "common.conf", "appendonly yes\n")
    conf = write(tmp_path / "redis.conf", "include common.conf\nappendonly no\ninclude common.conf\n")
    assert read_config(conf).value("appendonly") == "yes"


def test_read_config_missing_file_mentions_config_file(tmp_path):
    with pytest.raises(PreconditionFailed, match="config_file") as exc:
        read_config(tmp_path / "nope.conf")
    assert "nope.conf" in str(exc.value)


def test_read_config_missing_include_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = write(tmp_path / "redis.conf", "include missing.conf\n")
    with pytest.raises(PreconditionFailed, match="missing.conf"):
        read_config(conf)


def test_read_config_unparsable_line_names_file_and_line(tmp_path):
    conf = write(tmp_path / "redis.conf", 'port 6379\ndir "/data\n')
    with pytest.raises(PreconditionFailed, match=r"redis\.conf:2"):
        read_config(conf)


# --- mask_secrets ---------------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    "line",
    [
        f"requirepass {SECRET}",
        f'requirepass "{SECRET}"',
        f"REQUIREPASS {SECRET}",
        f"  masterauth {SECRET}",
        f"masterauth '{SECRET} with space'",
        f"user alice on >{SECRET} ~* +@all",
        f"user alice on #{SECRET} ~* &* +@all",
        f"user bob on <{SECRET} >other !{SECRET} ~app:* -@dangerous",
        f'user alice on ">{SECRET}" ~* +@all',
    ],
)
@pytest.mark.parametrize("prefix", ["", "+", "-", " "], ids=["plain", "diff-add", "diff-del", "diff-ctx"])
def test_mask_secrets_removes_every_password(line, prefix):
    text = f"port 6379\n{prefix}{line}\nappendonly yes\n"
    masked = mask_secrets(text)
    assert SECRET not in masked
    assert MASK in masked
    out = masked.splitlines(keepends=True)
    assert out[0] == "port 6379\n"
    assert out[2] == "appendonly yes\n"
    assert out[1].startswith(prefix) and out[1].endswith("\n")
    assert len(out) == 3


def test_mask_secrets_keeps_directive_and_user_rules():
    masked = mask_secrets(f"requirepass {SECRET}\nuser alice on >{SECRET} ~keys:* +@read\n")
    assert masked == f"requirepass {MASK}\nuser alice on >{MASK} ~keys:* +@read\n"


def test_mask_secrets_in_a_unified_diff():
    diff = (
        "--- redis.conf\n"
        "+++ redis.conf (after CONFIG REWRITE)\n"
        "@@ -1,4 +1,5 @@\n"
        f" requirepass {SECRET}\n"
        "-appendonly no\n"
        "+appendonly yes\n"
        f"-masterauth {SECRET}\n"
        f"+user default on #{SECRET} ~* &* +@all\n"
        " # requirepass foobared\n"
    )
    masked = mask_secrets(diff)
    assert SECRET not in masked
    assert masked.splitlines() == [
        "--- redis.conf",
        "+++ redis.conf (after CONFIG REWRITE)",
        "@@ -1,4 +1,5 @@",
        f" requirepass {MASK}",
        "-appendonly no",
        "+appendonly yes",
        f"-masterauth {MASK}",
        f"+user default on #{MASK} ~* &* +@all",
        " # requirepass foobared",
    ]


def test_mask_secrets_leaves_other_text_byte_identical():
    text = (
        "# Redis configuration\r\n"
        "\r\n"
        'dir "/var/lib/redis"\r\n'
        "save 3600 1 300 100 60 10000\n"
        "   appendonly    yes   \n"
        "user default on nopass ~* &* +@all\n"
        "+appendfsync everysec\n"
        "-appendfsync no\n"
        " port 6379\n"
        "--- a\n"
        "+++ b\n"
        "\ttcp-keepalive 300"  # no final newline
    )
    assert mask_secrets(text) == text


@pytest.mark.parametrize("text, secret", [
    ("primaryauth s3cretpw\n", "s3cretpw"),  # Valkey's name for masterauth
    ('primaryuser "repl-user"\n', "repl-user"),
    ('user alice on ">my pass" ~* +@all\n', "my pass"),
    ('"requirepass" hunter2\n', "hunter2"),
    ("12:M 26 Nov 2026 06:00:00.000 # >>> 'user alice on >hunter22 ~* +@all'\n", "hunter22"),
    ("12:M 26 Nov 2026 06:00:00.000 # >>> 'requirepass hunter23'\n", "hunter23"),
])
def test_mask_secrets_more_forms(text: str, secret: str) -> None:
    from runbook.server.configfile import mask_secrets

    assert secret not in mask_secrets(text)
    assert secret not in mask_secrets("+" + text)


def test_parse_error_does_not_echo_the_secret(tmp_path) -> None:
    from runbook.errors import PreconditionFailed
    from runbook.server.configfile import read_config

    conf = tmp_path / "r.conf"
    conf.write_text('requirepass "hunter2\n')
    with pytest.raises(PreconditionFailed) as err:
        read_config(conf)
    assert "hunter2" not in str(err.value)
