"""runbook.server.target without a server: the target parameter, password redaction, locality."""

from __future__ import annotations

import pytest

from runbook.errors import ParameterError
from runbook.server.target import check_target_parameter, is_local, redact_url


@pytest.mark.parametrize(
    "target",
    [
        "sandbox",
        "redis://10.0.0.5:6379/0",
        "redis://localhost",
        "rediss://redis.example.com:6380/2",
        "redis://alice@10.0.0.5:6379",  # a user name is not a secret
        "redis://[::1]:6379/0",
        "unix:///run/redis/redis.sock",
    ],
)
def test_check_target_parameter_accepts(target):
    assert check_target_parameter(target) is None


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("10.0.0.5:6379", "not a redis"),
        ("localhost", "not a redis"),
        ("http://10.0.0.5:6379", "not a redis"),
        ("Sandbox", "not a redis"),
        ("", "not a redis"),
        ("redis://", "no host"),
        ("rediss:///0", "no host"),
        ("redis://alice:hunter2@10.0.0.5:6379/0", "password"),
        ("redis://:hunter2@10.0.0.5:6379/0", "password"),
        ("rediss://alice:hunter2@[::1]:6380", "password"),
    ],
)
def test_check_target_parameter_refuses(target, match):
    with pytest.raises(ParameterError, match=match) as exc:
        check_target_parameter(target)
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize(
    "target",
    [
        "unix:///run/redis/redis.sock?password=hunter2",
        "redis://10.0.0.5:6379/0?password=hunter2",
    ],
)
def test_check_target_parameter_refuses_password_in_query(target):
    # redis-py's from_url takes `?password=` (documented for unix:// URLs): it is a password in the parameter.
    with pytest.raises(ParameterError) as exc:
        check_target_parameter(target)
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://alice:hunter2@10.0.0.5:6379/0", "redis://alice:********@10.0.0.5:6379/0"),
        ("redis://:hunter2@10.0.0.5/0", "redis://:********@10.0.0.5/0"),
        ("rediss://bob:p%40ss@redis.example.com:6380", "rediss://bob:********@redis.example.com:6380"),
        ("redis://alice@10.0.0.5:6379/0", "redis://alice@10.0.0.5:6379/0"),
        ("redis://10.0.0.5:6379/0", "redis://10.0.0.5:6379/0"),
        ("sandbox", "sandbox"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("redis://u:hunter2@[::1]:6379/0", "redis://u:********@[::1]:6379/0"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert "hunter2" not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://127.0.0.2:6379", True),
        ("redis://[::1]:6379/0", True),
        ("redis://localhost:6379", True),
        ("redis://LOCALHOST", True),
        ("unix:///run/redis/redis.sock", True),
        ("redis://10.0.0.5:6379/0", False),
        ("redis://redis.example.com:6379", False),
        ("redis://192.168.1.10", False),
        ("redis://[2001:db8::1]:6379", False),
        ("redis://localhost.example.com", False),
        ("sandbox", False),
    ],
)
def test_is_local(url, expected):
    assert is_local(url) is expected
