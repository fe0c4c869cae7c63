"""runbook.orchestration.params: the parameters cell, parameter files, -p pairs and validation."""

from __future__ import annotations

import pytest

from runbook.errors import ParameterError
from runbook.orchestration.params import Param, coerce_pair, load_files, parse_parameters_cell, validate

CELL = '''\
# Parameters
target: str = "sandbox"  # redis://host:port/db or sandbox
password_env: str = "REDIS_PASSWORD"  # environment variable holding the password

connect_timeout_s: float = 5.0  # seconds to wait
max_keys: int = 100
dry_run: bool = True  # only show what would change
tags: list = []  # free-form labels
'''


def test_parse_parameters_cell():
    params = parse_parameters_cell(CELL)
    assert list(params) == ["target", "password_env", "connect_timeout_s", "max_keys", "dry_run", "tags"]
    assert params["target"] == Param("target", "str", "sandbox", "redis://host:port/db or sandbox")
    assert params["connect_timeout_s"] == Param("connect_timeout_s", "float", 5.0, "seconds to wait")
    assert params["max_keys"] == Param("max_keys", "int", 100, "")
    assert params["dry_run"].default is True
    assert params["tags"].default == []


def test_parse_parameters_cell_help_may_contain_hash():
    assert parse_parameters_cell('x: str = "a"  # see #12484\n')["x"] == Param("x", "str", "a", "see #12484")


def test_parse_parameters_cell_default_may_contain_hash_inside_quotes():
    # The implementation says "The default may itself contain '#' inside quotes; literal_eval decides."
    params = parse_parameters_cell('url: str = "redis://h/0#frag"  # a URL with a fragment\n')
    assert params["url"] == Param("url", "str", "redis://h/0#frag", "a URL with a fragment")


@pytest.mark.parametrize(
    "line",
    [
        "target = 'sandbox'",  # no type
        "target: str",  # no default
        "2target: str = 'x'",  # not an identifier
        "x: str = undefined_name  # not a literal",
        "x: int = 1 +",
    ],
)
def test_parse_parameters_cell_rejects_non_conforming_lines(line):
    with pytest.raises(ParameterError) as exc:
        parse_parameters_cell(f'ok: int = 1\n{line}\n')
    assert line in str(exc.value) or repr(line) in str(exc.value)


# --- load_files -----------------------------------------------------------------------------------------

def test_load_files_later_files_win(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("target: redis://a:6379/0\nconnect_timeout_s: 1\nmax_keys: 5\n")
    b.write_text("target: redis://b:6379/0\nconnect_timeout_s: 2.5\n")
    assert load_files([a, b]) == {"target": "redis://b:6379/0", "connect_timeout_s": 2.5, "max_keys": 5}
    assert load_files([b, a]) == {"target": "redis://a:6379/0", "connect_timeout_s": 1, "max_keys": 5}


def test_load_files_empty_file_and_no_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_files([empty]) == {}
    assert load_files([]) == {}


def test_load_files_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad-params.yaml"
    bad.write_text("target: [unclosed\n")
    with pytest.raises(ParameterError, match="bad-params.yaml"):
        load_files([bad])


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_load_files_non_mapping(tmp_path, text):
    f = tmp_path / "list.yaml"
    f.write_text(text)
    with pytest.raises(ParameterError, match="list.yaml"):
        load_files([f])


def test_load_files_missing_file(tmp_path):
    with pytest.raises(ParameterError, match="nope.yaml"):
        load_files([tmp_path / "nope.yaml"])


# --- validate ---------------------------------------------------------------------------------------------

ALLOWED = parse_parameters_cell(CELL)


def test_validate_accepts_and_returns_values():
    values = {"target": "redis://10.0.0.5:6379/0", "max_keys": 7, "dry_run": False, "tags": ["a"]}
    assert validate(values, ALLOWED) == values


def test_validate_unknown_names_listed_with_valid_names():
    with pytest.raises(ParameterError) as exc:
        validate({"targte": "sandbox", "zzz": 1, "max_keys": 1}, ALLOWED)
    msg = str(exc.value)
    assert "targte" in msg and "zzz" in msg
    for name in ALLOWED:
        assert name in msg.split("Valid names:")[1]
    assert "max_keys" not in msg.split("Valid names:")[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("connect_timeout_s", "5"),  # str for float
        ("max_keys", True),  # bool for int
        ("connect_timeout_s", False),  # bool for float
        ("max_keys", 1.5),  # float for int
        ("dry_run", "yes"),  # str for bool
        ("dry_run", 1),  # int for bool
        ("target", 6379),  # int for str
        ("tags", "a,b"),  # str for list
    ],
)
def test_validate_wrong_type(name, value):
    with pytest.raises(ParameterError, match=name):
        validate({name: value}, ALLOWED)


def test_validate_wrong_type_message_carries_help():
    with pytest.raises(ParameterError, match="seconds to wait"):
        validate({"connect_timeout_s": "soon"}, ALLOWED)


def test_validate_int_accepted_for_float_and_widened():
    out = validate({"connect_timeout_s": 3}, ALLOWED)
    assert out["connect_timeout_s"] == 3.0
    assert type(out["connect_timeout_s"]) is float


SECRET_ALLOWED = {
    **ALLOWED,
    **parse_parameters_cell(
        'password: str = ""\nredis_auth: str = ""\napi_token: str = ""\nclient_secret: str = ""\nPASS: str = ""\n'
    ),
}


@pytest.mark.parametrize("name", ["password", "redis_auth", "api_token", "client_secret", "PASS"])
def test_validate_refuses_secret_looking_names(name):
    with pytest.raises(ParameterError, match="secret") as exc:
        validate({name: "hunter2"}, SECRET_ALLOWED)
    assert "hunter2" not in str(exc.value)


def test_validate_secret_names_allowed_when_empty_and_password_env_allowed():
    assert validate({"password": ""}, SECRET_ALLOWED) == {"password": ""}
    assert validate({"password_env": "MY_PASS"}, SECRET_ALLOWED) == {"password_env": "MY_PASS"}


@pytest.mark.parametrize(
    "url",
    [
        "redis://default:hunter2@10.0.0.5:6379/0",
        "redis://:hunter2@10.0.0.5:6379/0",
        "rediss://alice:hunter2@redis.example.com:6380",
    ],
)
def test_validate_refuses_target_with_password_without_echoing_it(url):
    with pytest.raises(ParameterError, match="password") as exc:
        validate({"target": url}, ALLOWED)
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize("target", ["10.0.0.5:6379", "localhost", "http://10.0.0.5:6379", "redis://", ""])
def test_validate_refuses_target_that_is_not_a_url(target):
    with pytest.raises(ParameterError):
        validate({"target": target}, ALLOWED)


@pytest.mark.parametrize("target", ["sandbox", "redis://10.0.0.5:6379/0", "unix:///run/redis.sock", "rediss://h:6380"])
def test_validate_accepts_good_targets(target):
    assert validate({"target": target}, ALLOWED) == {"target": target}


# --- coerce_pair -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("target", "true", "true"),
        ("target", "5", "5"),
        ("password_env", "0123", "0123"),
        ("dry_run", "true", True),
        ("dry_run", "false", False),
        ("max_keys", "5", 5),
        ("connect_timeout_s", "2.5", 2.5),
        ("tags", "[a, b]", ["a", "b"]),
        ("max_keys", "[unclosed", "[unclosed"),  # not YAML: kept as typed, validate then refuses it
    ],
)
def test_coerce_pair(name, raw, expected):
    got = coerce_pair(name, raw, ALLOWED[name])
    assert got == expected
    assert type(got) is type(expected)


def test_coerce_pair_unknown_name_parses():
    assert coerce_pair("nope", "7", None) == 7


@pytest.mark.parametrize("url", ["http://alice:hunter2@10.0.0.5:6379", "alice:hunter2@10.0.0.5:6379"])
def test_validate_refuses_non_redis_url_with_password_without_echoing_it(url):
    with pytest.raises(ParameterError) as exc:
        validate({"target": url}, ALLOWED)
    assert "hunter2" not in str(exc.value)
