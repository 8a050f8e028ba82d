"""``merge.yaml``: everything that made a merge (models, policy, calibration sources, weights,
seeds, dtype), written into its output folder and re-run with one command::

    graphperm merge --config merged/merge.yaml --out merged-again/

The policy is inline (as used, command-line overrides applied), so the file is complete on its
own; local paths are written absolute, so it re-runs from any folder.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "merge.yaml"
    >>> write_merge_config(path, {"models": ["builtin:bert-tiny"] * 2, "policy": {}})
    >>> load_merge_config(path).models
    ['builtin:bert-tiny', 'builtin:bert-tiny']
    >>> _ = path.write_text("models: [a, b]\\npolicy: {}\\nweight: [1, 0]\\n")
    >>> load_merge_config(path)
    Traceback (most recent call last):
    ...
    graphperm.errors.UsageError: ...merge.yaml: weight: unknown field (did you mean 'weights'?)
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graphperm import __version__
from graphperm.errors import UsageError

__all__ = ["MergeConfig", "absolute", "load_merge_config", "write_merge_config"]


class MergeConfig(BaseModel):
    """What ``graphperm merge --config`` reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    graphperm: str = Field("", description="the graphperm version that wrote the file")
    models: list[str] = Field(min_length=2, description="model A first, then B, C, ...")
    policy: dict = Field(description="the policy, inline (as `--policy` files hold it)")
    calib: list[str] = Field(default_factory=list, description="calibration sources")
    weights: list[float] | None = Field(None, description="weight of every model, A first")
    random_init: bool = False
    seed_b: int = 1
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


def absolute(spec: str) -> str:
    """``spec`` as an absolute path when it names a local file or folder, else as given (a hub
    id, ``builtin:NAME``)."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def write_merge_config(path: Path, config: dict) -> None:
    """Write ``config`` (the fields of :class:`MergeConfig`) as ``path``, with a header saying
    how to re-run it."""
    data = MergeConfig.model_validate({"graphperm": __version__, **config}).model_dump()
    data["models"] = [absolute(m) for m in data["models"]]
    data["calib"] = [absolute(c) for c in data["calib"]]
    header = (
        "# Everything that made this merge. Re-run it with:\n"
        f"#   graphperm merge --config {path.name} --out NEW_FOLDER\n"
    )
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def load_merge_config(path: str | Path) -> MergeConfig:
    """Read a ``merge.yaml``; one-line errors naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config '{path}' does not exist; pass a merge.yaml from a merge folder")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a merge config is a mapping of fields (models, policy, ...)")
    try:
        return MergeConfig.model_validate(data)
    except ValidationError as err:
        raise UsageError(f"{path}: " + "; ".join(_describe(e) for e in err.errors())) from None


def _describe(e: dict) -> str:
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(e["loc"][-1]), list(MergeConfig.model_fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close and close[0] != loc else ""
        return f"{loc}: unknown field{hint}"
    return f"{loc}: {e['msg']}"
