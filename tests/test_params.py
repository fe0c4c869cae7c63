"""runbook.orchestration.params: the parameters cell, parameter files, -p pairs and validation."""

from __future__ import annotations

import pytest

from runbook.errors import ParameterError
from runbook.orchestration.params import (
    BOUNDS,
    CHOICES,
    Param,
    check_reasons,
    coerce_pair,
    load_files,
    notebook_parameters,
    parse_parameters_cell,
    validate,
)
from runbook.orchestration.plan import FLEET_NOTEBOOK, NOTEBOOKS, notebooks_dir, plan

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


# --- unreadable files, duplicate keys (issue 15, items 7 and 8) ------------------------------------------

def test_load_files_refuses_a_key_given_twice_naming_it_and_its_lines(tmp_path):
    f = tmp_path / "two.yaml"
    f.write_text("target: redis://a:6379/0\nconfig_file: ''\ntarget: redis://b:6379/0\n")
    with pytest.raises(ParameterError, match=r"two.yaml sets target twice \(lines 1 and 3\)"):
        load_files([f])


def test_load_files_refuses_a_key_given_twice_in_a_fleet_entry(tmp_path):
    f = tmp_path / "fleet.yaml"
    f.write_text("targets:\n  - target: redis://a:6379/0\n    username: x\n    username: y\n")
    with pytest.raises(ParameterError, match=r"sets username twice \(lines 3 and 4\)"):
        load_files([f])


def test_load_files_same_key_in_two_files_is_no_duplicate(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("target: redis://a:6379/0\n")
    b.write_text("target: redis://b:6379/0\n")
    assert load_files([a, b]) == {"target": "redis://b:6379/0"}


def test_load_files_a_directory(tmp_path):
    with pytest.raises(ParameterError, match=f"parameter file {tmp_path} is a directory"):
        load_files([tmp_path])


def test_load_files_not_utf8_names_the_line(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("target: sandbox\n\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ParameterError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 on line 3\)"):
        load_files([f])


def test_load_files_a_name_that_is_not_text(tmp_path):
    f = tmp_path / "n.yaml"
    f.write_text("target: sandbox\n6379: port\n")
    with pytest.raises(ParameterError, match="6379 is not a parameter name"):
        load_files([f])


# --- allowed values and bounds (issue 15, items 8, 9 and 10) -----------------------------------------------

DECLARED = {name: spec for nb in [*NOTEBOOKS.values(), FLEET_NOTEBOOK]
            for name, spec in notebook_parameters(notebooks_dir() / nb).items()}


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_every_choice_is_declared_and_named_in_its_help(name):
    assert name in DECLARED
    for word in CHOICES[name]:
        assert word in DECLARED[name].help, (name, word)
    assert DECLARED[name].default in CHOICES[name]


def test_every_numeric_parameter_has_bounds_and_its_default_is_within():
    numeric = {n: s for n, s in DECLARED.items() if s.type in ("int", "float")}
    assert sorted(numeric) == sorted(BOUNDS)
    for name, spec in numeric.items():
        assert validate({name: spec.default}, DECLARED) == {name: spec.default}


@pytest.mark.parametrize(("name", "value", "message"), [
    ("appendfsync", "sometimes", "appendfsync must be one of always, everysec, no, got 'sometimes'"),
    ("appendfsync", "EVERYSEC", "appendfsync must be one of"),
    ("mode", "nuke", "mode must be one of online, restart, crash"),
    ("method", "foo", "method must be one of auto, rewrite, edit"),
    ("check", "everything", "check must be one of inspect, online-test"),
    ("sandbox_scenario", "prod", "sandbox_scenario must be one of rdb-only, runtime-aof"),
    ("connect_timeout_s", 0, "connect_timeout_s must be greater than 0"),
    ("command_timeout_s", -1.5, "command_timeout_s must be greater than 0"),
    ("timeout_s", 0.0, "timeout_s must be greater than 0"),
    ("timeout_s", float("inf"), "timeout_s must be a finite number"),
    ("crash_seconds", 0, "crash_seconds must be greater than 0"),
    ("keys", 0, "keys must be at least 1"),
    ("keys", -3, "keys must be at least 1"),
    ("keys", 3_000_000, "keys must be at most 100000"),
    ("ttl_s", 0, "ttl_s must be at least 1"),
    ("retention", 0, "retention must be at least 1"),
    ("parallel", 0, "parallel must be at least 1"),
])
def test_validate_refuses_values_outside_the_allowed(name, value, message):
    with pytest.raises(ParameterError, match=message.replace("(", r"\(")):
        validate({name: value}, DECLARED)


@pytest.mark.parametrize(("name", "value"), [
    ("appendfsync", "always"), ("mode", "crash"), ("method", "edit"), ("check", "online-test"),
    ("sandbox_scenario", "runtime-aof"), ("connect_timeout_s", 0.001), ("keys", 1), ("keys", 100_000),
    ("ttl_s", 1), ("retention", 1), ("crash_seconds", 0.5),
])
def test_validate_accepts_values_at_the_bounds(name, value):
    assert validate({name: value}, DECLARED) == {name: value}


@pytest.mark.parametrize(("target", "message"), [
    ("redis://127.0.0.1:notaport/0", "port must be a number from 1 to 65535"),
    ("redis://127.0.0.1:99999/0", "port must be a number from 1 to 65535"),
    ("redis://127.0.0.1:0/0", "port must be a number from 1 to 65535"),
    ("redis://127.0.0.1:6379/abc", "database must be a number"),
    ("redis://127.0.0.1:6379/0;touch x", "database must be a number"),
    ("redis://127.0.0.1:6379/0/1", "database must be a number"),
    ("unix:///run/redis.sock?db=one", "database must be a number"),
    ("redis://127.0.0.1:6379/0\nforged line", "control character '\\n'"),
    ("redis://127.0.0.1:6379/0\r", "control character '\\r'"),
    ("redis://127.0.0.1:6379/0\u200b", "control character '\\u200b'"),  # zero-width space: invisible
    ("redis://[::1:6379/0", "not a valid URL"),
    ("unix://", "names no socket path"),
])
def test_validate_refuses_malformed_targets(target, message):
    with pytest.raises(ParameterError) as exc:
        validate({"target": target}, ALLOWED)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value) and "\r" not in str(exc.value)


def test_a_control_character_message_masks_a_password():
    with pytest.raises(ParameterError) as exc:
        validate({"target": "redis://:hunter2@127.0.0.1:6379/0\n"}, ALLOWED)
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize("target", ["redis://h:6379", "redis://h:6379/", "redis://h:1/15", "redis://h:65535/0",
                                    "unix:///run/redis.sock?db=2", "rediss://[::1]:6380/0"])
def test_validate_accepts_ports_and_databases(target):
    assert validate({"target": target}, ALLOWED) == {"target": target}


@pytest.mark.parametrize("value", ["", "   ", "true", "Yes", True, None, 1])
def test_skip_backup_must_say_why(value: object) -> None:
    """Skipping the backup before a change is allowed only with a reason, recorded with the change (issue 14)."""
    with pytest.raises(ParameterError, match="skip_backup skips the backup before the change and must say why"):
        check_reasons({"skip_backup": value})


def test_skip_backup_with_a_reason_and_its_default_pass() -> None:
    check_reasons({"skip_backup": "taken by the host's nightly job at 02:00"})
    check_reasons({})  # not given: the backup is taken
    steps = plan(["all"], pairs=[("skip_backup", "taken by the host's nightly job at 02:00")])
    assert [s.name for s in steps][:3] == ["inspect", "backup", "enable-aof"]
    assert steps[1].parameters["skip_backup"] == "taken by the host's nightly job at 02:00"


def test_a_params_file_that_says_gateway_serves_every_run_of_it() -> None:
    """`gateway: true` (from `runbook params from-litellm`) says what the target is: a single-step run whose notebook
    does not use it takes the file all the same; inspect gets it; a wrong value is refused either way."""
    from runbook.orchestration.plan import plan

    target = ("target", "redis://127.0.0.1:6379/0")
    (step,) = plan(["enable-aof"], pairs=[target, ("gateway", "true")])
    assert "gateway" not in step.parameters
    assert [s.parameters.get("gateway") for s in plan(["all"], pairs=[target, ("gateway", "true")])
            if s.name == "inspect"] == [True, True]
    with pytest.raises(ParameterError, match="gateway must be bool"):
        plan(["enable-aof"], pairs=[target, ("gateway", "maybe")])
