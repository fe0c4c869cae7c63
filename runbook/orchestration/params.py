"""Parameters: read from the notebooks' `parameters` cells, merged from files and -p pairs, checked.

Like papermill: files first, then `-p KEY VALUE` pairs; the last one wins. Everything
here runs before any server is touched, and every error is a ParameterError (exit 2).
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from runbook.errors import ParameterError
from runbook.orchestration.fleet import CHECKS as FLEET_CHECKS
from runbook.sandbox.seed import SCENARIOS
from runbook.server.target import check_target_parameter
from runbook.server.tls import check_tls_parameters
from runbook.steps.enable_aof import FSYNC_POLICIES
from runbook.steps.persist_config import METHODS
from runbook.steps.test_persistence import MAX_CANARIES, MODES

_LINE = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*:\s*(?P<type>[\w\[\], |]+?)\s*=\s*(?P<rest>.+)$")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list": list,
}
#: Parameter names that may never carry a secret value (parameters end up in the evidence).
_SECRET_NAME = re.compile(r"pass(word)?|secret|token|auth", re.IGNORECASE)
#: The parameters that name an environment variable holding a password (the name is no secret).
ENV_NAMES = ("password_env", "sentinel_password_env")

#: The words a parameter may take, by name: the tables the steps themselves check against, so that a
#: wrong word stops the run before a kernel starts or a server is touched.
CHOICES: dict[str, tuple[str, ...]] = {
    "appendfsync": FSYNC_POLICIES,  # enable-aof
    "method": METHODS,  # persist-config
    "mode": MODES,  # test-persistence
    "check": tuple(FLEET_CHECKS.values()),  # the fleet notebook
    "sandbox_scenario": SCENARIOS,  # target sandbox
}
#: Bounds of the numeric parameters, by name: (lowest, highest or None). Deadlines and durations (floats)
#: must be more than their lowest, counts (ints) at least it.
BOUNDS: dict[str, tuple[float, float | None]] = {
    "connect_timeout_s": (0, None), "command_timeout_s": (0, None), "timeout_s": (0, None),
    "crash_seconds": (0, None),
    "keys": (1, MAX_CANARIES), "ttl_s": (1, None), "retention": (1, None), "parallel": (1, None),
}


#: Parameters that skip a safety step: given at all, they must say why (the reason is recorded with the change).
REASONS: dict[str, str] = {"skip_backup": "the backup before the change"}
#: Words that are not a reason.
_NOT_A_REASON = frozenset({"", "yes", "no", "true", "false", "on", "off", "1", "0", "y", "n", "skip"})


@dataclass(frozen=True)
class Param:
    """One line of a notebook's parameters cell: `name: type = default  # help`."""

    name: str
    type: str
    default: Any
    help: str


def notebook_parameters(path: Path) -> dict[str, Param]:
    """The parameters declared in the cell tagged `parameters` of the notebook at `path`."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            return parse_parameters_cell(source)
    raise ParameterError(f"{path} has no cell tagged 'parameters'")


def parse_parameters_cell(source: str) -> dict[str, Param]:
    out: dict[str, Param] = {}
    for line in source.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line.strip())
        if not m:
            raise ParameterError(f"parameters cell line is not `name: type = default  # help`: {line!r}")
        default, help_text = _default_and_help(m.group("rest"), line)
        out[m.group("name")] = Param(m.group("name"), m.group("type").strip(), default, help_text)
    return out


def _default_and_help(rest: str, line: str) -> tuple[Any, str]:
    """Split `default  # help`: the comment starts at the first '#' after which the default parses."""
    cuts = [i for i, ch in enumerate(rest) if ch == "#"] + [len(rest)]
    for cut in cuts:
        try:
            return ast.literal_eval(rest[:cut].strip()), rest[cut + 1 :].strip()
        except (ValueError, SyntaxError):
            continue
    raise ParameterError(f"parameters cell default is not a literal: {line!r}")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"{key} twice (lines {first} and {again})")
        self.key, self.first, self.again = key, first, again


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: the constructor below says so
                continue
        return super().construct_mapping(node, deep=deep)


def _read_file(path: Path) -> Any:
    """One parameter file's YAML; ParameterError naming the file when it cannot be read or parsed."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError as err:
        raise ParameterError(f"parameter file {path} does not exist") from err
    except IsADirectoryError as err:
        raise ParameterError(f"parameter file {path} is a directory: give the YAML file in it") from err
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise ParameterError(f"parameter file {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} on "
                             f"line {line}): save it as UTF-8") from err
    except OSError as err:
        raise ParameterError(f"parameter file {path} cannot be read: {err.strerror or err}") from err
    except _DuplicateKey as err:
        raise ParameterError(f"parameter file {path} sets {err}: keep one (YAML would silently use the last)") from err
    except yaml.YAMLError as err:
        raise ParameterError(f"parameter file {path} is not valid YAML: {err}") from err


def load_files(files: Iterable[str | Path]) -> dict[str, Any]:
    """Merge YAML parameter files in order (later files win)."""
    merged: dict[str, Any] = {}
    for f in files:
        path = Path(f)
        data = _read_file(path)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ParameterError(f"parameter file {path} must be a mapping of name: value, got {type(data).__name__}")
        odd = [k for k in data if not isinstance(k, str)]
        if odd:
            raise ParameterError(f"parameter file {path}: {odd[0]!r} is not a parameter name (names are text)")
        merged.update(data)
    return merged


def coerce_pair(name: str, raw: str, spec: Param | None) -> Any:
    """A `-p NAME VALUE` string as the declared type (strings stay as typed)."""
    if spec is not None and spec.type == "str":
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _check_value(name: str, value: Any, spec: Param) -> None:
    """ParameterError when a value of the right type is not one of CHOICES or outside BOUNDS."""
    if name in CHOICES and isinstance(value, str) and value not in CHOICES[name]:
        raise ParameterError(f"parameter {name} must be one of {', '.join(CHOICES[name])}, got {value!r}"
                             + (f" ({spec.help})" if spec.help else ""))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(f"parameter {name} must be a finite number, got {value!r}")
    if name not in BOUNDS:
        return
    low, high = BOUNDS[name]
    if isinstance(value, float) and value <= low:
        raise ParameterError(f"parameter {name} must be greater than {low}, got {value!r}"
                             + (f" ({spec.help})" if spec.help else ""))
    if isinstance(value, int) and value < low:
        raise ParameterError(f"parameter {name} must be at least {low}, got {value!r}"
                             + (f" ({spec.help})" if spec.help else ""))
    if high is not None and value > high:
        raise ParameterError(f"parameter {name} must be at most {high}, got {value!r}"
                             + (f" ({spec.help})" if spec.help else ""))


def check_reasons(given: Mapping[str, Any]) -> None:
    """ParameterError when a parameter of REASONS is given (in a file or with -p) without a reason: an empty
    value, or a yes. Its default (empty: the step is not skipped) is never checked."""
    for name, what in REASONS.items():
        value = given.get(name)
        if name in given and (not isinstance(value, str) or value.strip().lower() in _NOT_A_REASON):
            raise ParameterError(f"parameter {name} skips {what} and must say why, got {value!r}: give the reason, "
                                 f"e.g. -p {name} 'nightly backup at 02:00 to s3://backups/redis' (it is recorded "
                                 "with the change), or leave it out")


def validate(values: Mapping[str, Any], allowed: Mapping[str, Param]) -> dict[str, Any]:
    """Check names, types and secrets; returns the values with floats widened. Raises ParameterError."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s): {', '.join(unknown)}. Valid names: {', '.join(sorted(allowed))}"
        )
    out: dict[str, Any] = {}
    for name, value in values.items():
        spec = allowed[name]
        if _SECRET_NAME.search(name) and name not in ENV_NAMES and value not in ("", None):
            raise ParameterError(f"{name} looks like a secret; parameters are copied into the evidence. "
                                 "Put the password in the environment variable named by password_env.")
        expected = _TYPES.get(spec.type.split("|")[0].strip())
        if expected is not None:
            if isinstance(value, bool) and spec.type != "bool":
                ok = False
            else:
                ok = isinstance(value, expected)
            if not ok:
                raise ParameterError(
                    f"parameter {name} must be {spec.type}, got {type(value).__name__} {value!r}"
                    + (f" ({spec.help})" if spec.help else "")
                )
        if spec.type == "float" and isinstance(value, int):
            value = float(value)
        _check_value(name, value, spec)
        out[name] = value
    if "target" in out:
        check_target_parameter(str(out["target"]))
        check_tls_parameters(str(out["target"]), out)
    return out
