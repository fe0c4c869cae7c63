"""The Redis servers a LiteLLM proxy config uses: `runbook params from-litellm` and `-p gateway_config`.

The configs in tests/data/litellm/ are shaped like LiteLLM's documented ones. Each is read here (what the reader
finds, where from), and the ones a real server can stand behind are pointed at real servers on loopback: the
params file `from-litellm` prints reaches them (`runbook run inspect -f OUT`), `-p gateway_config` plans the same
targets, and no password reaches the output or the archive.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import redis
import yaml
from conftest import binary_or_skip
from helpers import index, run_json, runbook_cli

from runbook.cli import main
from runbook.errors import ParameterError, TargetUnreachable
from runbook.model import ConnectionSpec
from runbook.orchestration.gateway import gateway_parameters, read_litellm_config
from runbook.orchestration.plan import plan
from runbook.sandbox.throwaway import SEED_CONFIG
from runbook.server.target import connect

DATA = Path(__file__).parent / "data" / "litellm"
URL_SECRET = "not-a-real-secret-8Fq2"  # inside url-password.yaml's redis_url
LITERAL_SECRET = "your_password"  # literal-password.yaml's cache_params.password, as LiteLLM's docs write it


def read(name: str, env: dict[str, str] | None = None):
    return read_litellm_config(DATA / name, env or {})


def copy(tmp_path: Path, name: str, ports: dict[int, int]) -> Path:
    """A data config with its ports replaced by the ports of servers started here."""
    text = (DATA / name).read_text()
    for old, new in ports.items():
        text = text.replace(str(old), str(new))
    out = tmp_path / name
    out.write_text(text)
    return out


# -- what the reader finds ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "env", "expected", "where"), [
    ("router.yaml", {}, {"target": "redis://127.0.0.1:6379/0", "password_env": "REDIS_PASSWORD"},
     ["router_settings.redis_host (line 12)", "router_settings.redis_port (line 14)",
      "router_settings.redis_password (line 13) = os.environ/REDIS_PASSWORD"]),
    ("cache.yaml", {}, {"target": "redis://127.0.0.1:6380/0", "password_env": "CACHE_REDIS_PASSWORD"},
     ["litellm_settings.cache_params.host (line 12)", "litellm_settings.cache_params.port (line 13)"]),
    ("env-refs.yaml", {"GATEWAY_REDIS_HOST": "10.1.2.3", "GATEWAY_REDIS_PORT": "6390"},
     {"target": "redis://10.1.2.3:6390/0", "password_env": "GATEWAY_REDIS_PASSWORD"},
     ["router_settings.redis_host (line 9) = os.environ/GATEWAY_REDIS_HOST"]),
    ("env-only.yaml", {"REDIS_HOST": "10.1.2.3", "REDIS_PORT": "6391", "REDIS_PASSWORD": "x", "REDIS_USERNAME": "gw"},
     {"target": "redis://10.1.2.3:6391/0", "username": "gw", "password_env": "REDIS_PASSWORD"},
     ["environment REDIS_HOST", "environment REDIS_PORT", "environment REDIS_PASSWORD"]),
    # LiteLLM's no-cache_params branch names REDIS_HOST as the cache's own host, which outranks REDIS_URL.
    ("env-only.yaml", {"REDIS_HOST": "10.1.2.3", "REDIS_URL": "redis://10.9.9.9:6379"},
     {"target": "redis://10.1.2.3:6379/0", "password_env": "REDIS_PASSWORD"}, ["environment REDIS_HOST"]),
    ("env-only.yaml", {"REDIS_URL": "rediss://gw@10.9.9.9:6380/2", "REDIS_SSL": "True"},
     {"target": "rediss://10.9.9.9:6380/2", "username": "gw", "password_env": ""}, ["environment REDIS_URL"]),
    # The config's environment_variables replace the process's (the proxy sets them).
    ("environment-variables.yaml", {"REDIS_HOST": "10.0.0.99"},
     {"target": "redis://127.0.0.1:6379/0", "password_env": "GATEWAY_REDIS_PASSWORD"},
     ["environment_variables.REDIS_HOST (line 3)", "environment_variables.REDIS_PORT (line 4)"]),
    ("sentinel.yaml", {},
     {"target": "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/mymaster",
      "password_env": "REDIS_PASSWORD", "sentinel_password_env": "SENTINEL_PASSWORD"},
     ["litellm_settings.cache_params.sentinel_nodes (line 12)",
      "litellm_settings.cache_params.service_name (line 11)"]),
    ("cluster.yaml", {}, {"target": "redis://127.0.0.1:7001/0", "password_env": "REDIS_PASSWORD", "discover": True},
     ["litellm_settings.cache_params.redis_startup_nodes (line 11)"]),
    # REDIS_CLUSTER_NODES wins over a host (LiteLLM's Cache checks it before building a single-node client).
    ("cache.yaml", {"REDIS_CLUSTER_NODES": '[{"host": "10.5.5.5", "port": 7000}]'},
     {"target": "redis://10.5.5.5:7000/0", "password_env": "CACHE_REDIS_PASSWORD", "discover": True},
     ["environment REDIS_CLUSTER_NODES"]),
    # A cache that is not Redis: LiteLLM's coordination Redis comes from the REDIS_* variables alone.
    ("s3.yaml", {"REDIS_HOST": "10.1.2.3"}, {"target": "redis://10.1.2.3:6379/0", "password_env": "REDIS_PASSWORD"},
     ["environment REDIS_HOST"]),
])
def test_one_redis_is_read_with_where_it_came_from(name: str, env: dict, expected: dict, where: list[str]) -> None:
    found = read(name, env)
    assert found.params() == {**expected, "gateway": True}  # inspect shows what the gateway keeps there
    assert not found.problems
    (target,) = found.targets
    assert set(where) <= set(target.sources), target.sources


def test_router_and_cache_on_different_servers_are_two_targets_each_with_its_password_variable() -> None:
    found = read("both.yaml")
    assert found.params() == {"gateway": True, "targets": [
        {"target": "redis://127.0.0.1:6379/0", "password_env": "ROUTER_REDIS_PASSWORD"},
        {"target": "redis://127.0.0.1:6380/0", "password_env": "CACHE_REDIS_PASSWORD"}]}
    assert [t.roles for t in found.targets] == [("router",), ("cache",)]
    text = found.render()
    assert yaml.safe_load(text) == found.params()
    assert "# the router's usage counters and cooldowns: router_settings.redis_host (line 10)" in text
    assert "# the response cache: litellm_settings.cache_params.host (line 18)" in text


def test_router_and_cache_on_one_server_are_one_target(tmp_path: Path) -> None:
    config = tmp_path / "same.yaml"
    config.write_text((DATA / "both.yaml").read_text().replace("6380", "6379").replace("CACHE_REDIS", "ROUTER_REDIS"))
    found = read_litellm_config(config, {})
    (target,) = found.targets
    assert target.target == "redis://127.0.0.1:6379/0" and target.roles == ("router", "cache")
    assert "litellm_settings.cache_params.port (line 19)" in target.sources


@pytest.mark.parametrize(("name", "secret", "line"), [
    ("literal-password.yaml", LITERAL_SECRET, "literal-password.yaml:13 litellm_settings.cache_params.password holds "
                                              "the password itself"),
    ("url-password.yaml", URL_SECRET, "url-password.yaml:9 router_settings.redis_url carries the password inside "
                                      "the URL"),
])
def test_a_password_written_in_the_config_is_named_by_line_and_never_copied(name: str, secret: str, line: str,
                                                                             capsys: pytest.CaptureFixture) -> None:
    found = read(name)
    assert found.params() == {"target": "redis://127.0.0.1:6379/0", "password_env": "REDIS_PASSWORD", "gateway": True}
    assert any(line in p and "os.environ/REDIS_PASSWORD" in p for p in found.problems), found.problems
    assert secret not in found.render() + repr(found)
    assert main(["params", "from-litellm", str(DATA / name)]) == 0
    out, err = capsys.readouterr()
    assert line in err and line in out and secret not in out + err
    # As a run's parameter it is refused: the runbook and the gateway should read the same variable.
    with pytest.raises(ParameterError, match=line.split(" ", 1)[0]):
        gateway_parameters(DATA / name, {}, (), {})


@pytest.mark.parametrize(("name", "env", "message"), [
    ("s3.yaml", {}, r"s3.yaml:10 the response cache is type s3, not a Redis"),
    ("no-redis.yaml", {}, "no router_settings.redis_\\*, no litellm_settings.cache with type redis"),
    ("env-only.yaml", {}, "no host, url, cluster or Sentinel nodes in the config or the REDIS_\\* environment"),
    ("env-refs.yaml", {"GATEWAY_REDIS_PORT": "6390"},
     r"env-refs.yaml:9 router_settings.redis_host is os.environ/GATEWAY_REDIS_HOST, which is not set here: export "
     "GATEWAY_REDIS_HOST"),
])
def test_no_usable_redis_is_a_parameter_error_that_says_why(name: str, env: dict, message: str,
                                                            capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ParameterError, match=message):
        read(name, env)
    for var in [v for v in os.environ if v.startswith(("REDIS_", "GATEWAY_"))]:
        monkeypatch.delenv(var)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["params", "from-litellm", str(DATA / name)]) == 2
    assert capsys.readouterr().out == ""


def test_a_password_inside_redis_url_in_the_environment_is_a_note_and_not_copied() -> None:
    found = read("env-only.yaml", {"REDIS_URL": "redis://:env-secret-3c9a@10.9.9.9:6379"})
    assert found.params() == {"target": "redis://10.9.9.9:6379/0", "password_env": "REDIS_PASSWORD", "gateway": True}
    assert any("environment REDIS_URL carries a password" in n for n in found.notes), found.notes
    assert "env-secret-3c9a" not in found.render() + repr(found)


def test_coordination_redis_is_the_proxys_redis_beside_an_s3_cache(tmp_path: Path) -> None:
    config = tmp_path / "coordination.yaml"
    config.write_text((DATA / "s3.yaml").read_text() + "\ngeneral_settings:\n  coordination_redis:\n"
                      "    host: 10.7.7.7\n    port: 6381\n    password: os.environ/COORD_PASSWORD\n")
    found = read_litellm_config(config, {"REDIS_HOST": "10.1.2.3"})  # the explicit block wins over REDIS_*
    assert found.params() == {"target": "redis://10.7.7.7:6381/0", "password_env": "COORD_PASSWORD", "gateway": True}
    assert found.targets[0].roles == ("coordination",)
    assert "general_settings.coordination_redis.host (line 18)" in found.targets[0].sources


def test_cache_params_without_cache_true_are_not_used() -> None:
    text = (DATA / "cache.yaml").read_text().replace("cache: True", "cache: False")
    found = read_litellm_config(_write(text), {"REDIS_HOST": "10.1.2.3"})  # the coordination fallback remains
    assert found.params()["target"] == "redis://10.1.2.3:6379/0"
    assert any("cache_params is not used: litellm_settings.cache is not true" in n for n in found.notes)


def _write(text: str) -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    f.write(text)
    f.close()
    return Path(f.name)


# -- the command and the parameter ----------------------------------------------------------------------------


def test_out_is_written_atomically_and_not_over_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "gateway.yaml"
    assert main(["params", "from-litellm", str(DATA / "both.yaml"), "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["targets"][1]["password_env"] == "CACHE_REDIS_PASSWORD"
    out.write_text("# mine\n")
    assert main(["params", "from-litellm", str(DATA / "router.yaml"), "--out", str(out)]) == 2
    assert "exists: give --force" in capsys.readouterr().err and out.read_text() == "# mine\n"
    assert main(["params", "from-litellm", str(DATA / "router.yaml"), "--out", str(out), "--force"]) == 0
    assert yaml.safe_load(out.read_text())["target"] == "redis://127.0.0.1:6379/0"
    assert [p.name for p in tmp_path.iterdir()] == ["gateway.yaml"]  # no temp file left beside it


def test_gateway_config_plans_the_same_targets_as_the_params_file_and_follows_the_file(tmp_path: Path) -> None:
    out = tmp_path / "gateway.yaml"
    assert main(["params", "from-litellm", str(DATA / "both.yaml"), "--out", str(out)]) == 0
    from_file = plan(["inspect", "enable-aof"], [out])
    config = copy(tmp_path, "both.yaml", {})
    from_config = plan(["inspect", "enable-aof"], [], [("gateway_config", str(config))])
    assert [(s.name, s.targets, s.parameters) for s in from_config] == \
           [(s.name, s.targets, s.parameters) for s in from_file]
    assert from_config[0].targets == ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0")
    # Only the notebooks that declare `gateway` (inspect) get it: enable-aof alone plans without it.
    assert [s.targets for s in plan(["enable-aof"], [], [("gateway_config", str(config))])] == \
           [("redis://127.0.0.1:6379/0",), ("redis://127.0.0.1:6380/0",)]
    # Read on every run: the config changed, so does the plan (no sandbox default either way).
    config.write_text((DATA / "router.yaml").read_text())
    (step,) = plan(["inspect"], [], [("gateway_config", str(config))])
    assert step.targets == ("redis://127.0.0.1:6379/0",) and step.parameters["password_env"] == "REDIS_PASSWORD"
    # In a params file too; explicit settings win over the config's; a target beside it is refused.
    params = tmp_path / "p.yaml"
    params.write_text(f"gateway_config: {config}\npassword_env: MY_VAR\n")
    (step,) = plan(["inspect"], [params])
    assert step.parameters["password_env"] == "MY_VAR"
    with pytest.raises(ParameterError, match="either gateway_config .* or target, not both"):
        plan(["inspect"], [params], [("target", "redis://127.0.0.1:6379/0")])


# -- against real servers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "how"), [("redis-7", "-f"), ("valkey-9", "-p")])
def test_the_params_file_reaches_the_router_and_cache_servers(label: str, how: str, make_sandbox,
                                                              tmp_path: Path) -> None:
    """`-f` the params file from-litellm wrote, or `-p gateway_config` the LiteLLM config itself: the same two
    servers inspected, each authenticated with its own variable's password, which no file of the run holds."""
    binary = binary_or_skip(label)
    secrets = {"ROUTER_REDIS_PASSWORD": "router-pw-5b1d", "CACHE_REDIS_PASSWORD": "cache-pw-c0a7"}
    router = make_sandbox(binary, password=secrets["ROUTER_REDIS_PASSWORD"])
    cache = make_sandbox(binary, password=secrets["CACHE_REDIS_PASSWORD"])
    for sb, keys in ((router, 3), (cache, 5)):  # told apart by their key counts
        client = sb.client()
        client.mset({f"k{i}": i for i in range(keys)})
    config = copy(tmp_path, "both.yaml", {6379: router.port, 6380: cache.port})
    out = tmp_path / "gateway.yaml"
    done = runbook_cli("params", "from-litellm", str(config), "--out", str(out), env=secrets)
    assert done.returncode == 0, done.stderr
    archive = tmp_path / "archive"
    given = ["-f", str(out)] if how == "-f" else ["-p", "gateway_config", str(config)]
    rc, result, err = run_json(archive, "inspect", *given, env=secrets)
    assert rc in (0, 1), err
    keys = {s["target"]: s["summary"]["dbsize"] for s in result["steps"]}
    assert keys == {f"redis://127.0.0.1:{router.port}/0": 3, f"redis://127.0.0.1:{cache.port}/0": 5}
    # Two servers are a fleet: each still gets what the gateway keeps there (its record; the fleet document).
    sampled = {s["target"]: s["summary"]["gateway_keys"]["sample"]["keys_examined"] for s in result["steps"]}
    assert sampled == keys
    fleet_nb = (archive / result["steps"][0]["ipynb"]).read_text()
    assert "What the gateway keeps" in fleet_nb and "SCAN calls" in fleet_nb
    assert sorted(r["target"] for r in index(archive)) == sorted(keys)
    for path in [out, *archive.rglob("*")]:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert all(s not in text for s in secrets.values()), path
    assert all(s not in done.stdout + done.stderr + err for s in secrets.values())
    if how == "-f":  # several servers: each is rehearsed with -p target URL, as the README says
        cache_url = f"redis://127.0.0.1:{cache.port}/0"
        proc = runbook_cli("rehearse", "-f", str(out), "-p", "target", cache_url, "--archive",
                           str(tmp_path / "rehearsal"), env=secrets)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert cache_url in proc.stdout and f"127.0.0.1:{router.port}" not in proc.stdout
        wrong = runbook_cli("rehearse", "-f", str(out), "-p", "target", "redis://127.0.0.1:1/0", env=secrets)
        assert wrong.returncode == 2 and "lists no such target" in wrong.stdout + wrong.stderr
        assert cache_url in wrong.stdout + wrong.stderr  # it names the targets there are


@pytest.mark.parametrize("label", ["redis-7", "valkey-9"])
def test_sentinel_and_cluster_cache_params_name_real_groups(label: str, tmp_path: Path) -> None:
    from topologies import start_cluster, start_replication_group, start_sentinels

    binary = binary_or_skip(label)
    with start_replication_group(binary, tmp_path / "group", replicas=1) as group, \
            start_sentinels(binary, tmp_path / "sentinels", group, count=3) as sentinels, \
            start_cluster(binary, tmp_path / "cluster", primaries=3, replicas_each=0) as cluster:
        ports = [int(u.rsplit(":", 1)[1]) for u in sentinels.urls]
        found = read_litellm_config(copy(tmp_path, "sentinel.yaml", dict(zip((26379, 26380, 26381), ports))), {})
        assert found.params()["target"] == sentinels.target
        # The URL's Sentinels are the ones that name the group's primary.
        sentinel = redis.Sentinel([("127.0.0.1", p) for p in ports], socket_timeout=5)
        assert sentinel.discover_master("mymaster") == ("127.0.0.1", group.primary.port)
        if label == "redis-7":  # one inspection through them (a notebook run is the slow part of this file)
            out = tmp_path / "gateway.yaml"
            out.write_text(found.render())
            rc, result, err = run_json(tmp_path / "archive", "inspect", "-f", str(out))
            assert rc in (0, 1), err
            (step,) = result["steps"]
            topology = step["summary"]["topology"]
            assert step["target"] == sentinels.target and topology["sentinel"]["master"] == group.primary.address
            assert sorted(n["address"] for n in topology["nodes"]) == sorted(n.address for n in group.nodes)
        first = cluster.nodes[0]
        found = read_litellm_config(copy(tmp_path, "cluster.yaml", {7001: first.port}), {})
        assert found.params() == {"target": first.url, "password_env": "REDIS_PASSWORD", "discover": True,
                                  "gateway": True}
        assert redis.Redis.from_url(found.params()["target"]).cluster("info")["cluster_state"] == "ok"


def test_out_may_not_be_the_litellm_config_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command only reads the gateway's config: --out naming that file is refused even with --force."""
    config = tmp_path / "config.yaml"
    config.write_text("router_settings:\n  redis_host: 10.0.0.5\n  redis_port: 6379\n")
    before = config.read_bytes()
    assert main(["params", "from-litellm", str(config), "--out", str(tmp_path / "." / "config.yaml"),
                 "--force"]) == 2
    assert "is the LiteLLM config being read" in capsys.readouterr().err
    assert config.read_bytes() == before


def test_a_password_variable_that_is_not_set_is_named_when_authentication_fails(default_binary: Path,
                                                                                make_sandbox, clean_env) -> None:
    """from-litellm writes password_env for a password it would not copy; when that variable is not set where the
    run runs, the authentication failure says so (not only "put the right password in")."""
    sb = make_sandbox(default_binary, config=SEED_CONFIG + "requirepass s3cret\n")
    os.environ.pop("GW_UNSET_PW", None)
    with pytest.raises(TargetUnreachable, match=r"\$GW_UNSET_PW is not set in this environment"):
        connect(ConnectionSpec(sb.url, username="default", password_env="GW_UNSET_PW"))
    os.environ["GW_UNSET_PW"] = "wrong"
    with pytest.raises(TargetUnreachable) as err:
        connect(ConnectionSpec(sb.url, username="default", password_env="GW_UNSET_PW"))
    assert "is not set" not in str(err.value)
