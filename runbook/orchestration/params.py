"""Parameters: read from the notebooks' `parameters` cells, merged from files and -p pairs, checked.

Like papermill: files first, then `-p KEY VALUE` pairs; the last one wins. Everything
here runs before any server is touched, and every error is a ParameterError (exit 2).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from runbook.errors import ParameterError
from runbook.server.target import check_target_parameter

_LINE = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*:\s*(?P<type>[\w\[\], |]+?)\s*=\s*(?P<rest>.+)$")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list": list,
}
#: Parameter names that may never carry a secret value (parameters end up in the evidence).
_SECRET_NAME = re.compile(r"pass(word)?|secret|token|auth", re.IGNORECASE)


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


def load_files(files: Iterable[str | Path]) -> dict[str, Any]:
    """Merge YAML parameter files in order (later files win)."""
    merged: dict[str, Any] = {}
    for f in files:
        path = Path(f)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError as err:
            raise ParameterError(f"parameter file {path} does not exist") from err
        except yaml.YAMLError as err:
            raise ParameterError(f"parameter file {path} is not valid YAML: {err}") from err
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ParameterError(f"parameter file {path} must be a mapping of name: value, got {type(data).__name__}")
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
        if _SECRET_NAME.search(name) and name != "password_env" and value not in ("", None):
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
        out[name] = value
    if "target" in out:
        check_target_parameter(str(out["target"]))
    return out
