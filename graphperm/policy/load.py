"""Loading policies from YAML/JSON files or by name, with one-line errors."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from graphperm.analysis import KINDS, PART_NAMES
from graphperm.errors import PolicyError
from graphperm.policy.model import ROLES, Policy

__all__ = ["SPECS", "load_policy", "policy_names"]

SPECS = Path(__file__).resolve().parents[1] / "specs"
_CHOICES = {
    "kind": list(KINDS),
    "role": list(ROLES),
    "site": list(ROLES),
    "parts": list(PART_NAMES),
}


def policy_names() -> list[str]:
    """Names of the built-in policies (the files in ``specs/``)."""
    return sorted(p.stem for p in SPECS.glob("*.yaml"))


def load_policy(source: str | Path | dict | Policy) -> Policy:
    """A policy from a file path, a built-in name (``paper``), a dict, or a Policy."""
    if isinstance(source, Policy):
        return source
    if isinstance(source, dict):
        return _validate(source, "<policy>")
    path = Path(source)
    if not path.exists() and not path.suffix and (SPECS / f"{source}.yaml").is_file():
        path = SPECS / f"{source}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(str(source), policy_names(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PolicyError(
            f"policy '{source}' is neither a file nor a built-in policy{hint}; built-in: "
            + ", ".join(policy_names())
        )
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise PolicyError(
            f"{path}:{where} is not valid {path.suffix[1:] or 'YAML'}: {str(err).splitlines()[0]}"
        ) from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy is a mapping of fields, not {type(data).__name__}")
    return _validate(data, str(path))


def _validate(data: dict, where: str) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise PolicyError(f"{where}: " + "; ".join(_describe(e) for e in err.errors())) from None


def _describe(e: dict) -> str:
    loc = ".".join(str(p) for p in e["loc"])
    field = str(e["loc"][-1]) if e["loc"] else ""
    value = e.get("input")
    if e["type"] == "extra_forbidden":
        allowed = _allowed_at(e["loc"][:-1])
        close = difflib.get_close_matches(field, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{loc}: unknown field '{field}'{hint}"
    key = next((str(p) for p in reversed(e["loc"]) if str(p) in _CHOICES), None)
    if key and isinstance(value, str):
        close = difflib.get_close_matches(value, _CHOICES[key], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{loc}: '{value}' is not one of {', '.join(_CHOICES[key])}{hint}"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}"


def _allowed_at(loc: tuple) -> list[str]:
    """Field names of the model found at ``loc`` in a Policy."""
    from graphperm.policy.model import AlignRule, Calibration, WeightOverride

    model: type = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            break
        model = {"align": AlignRule, "weights": WeightOverride, "calibration": Calibration}.get(
            str(part), model
        )
    return list(model.model_fields)
