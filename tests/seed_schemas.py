"""The seeds' own OpenAPI schemas, parsed out of the seed documents.

The seeds are the authority for the chat routes. ``../shared/seeds`` is read
when it is there (the project's checkout); ``docs/seeds`` is the copy kept in
the repository for clones without it, and a test checks the two agree.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
SHARED_SEEDS = ROOT.parent / "shared" / "seeds"
VENDORED_SEEDS = ROOT / "docs" / "seeds"


def seed_dir() -> Path:
    return SHARED_SEEDS if SHARED_SEEDS.is_dir() else VENDORED_SEEDS


@cache
def seed_specs() -> list[dict[str, Any]]:
    specs = []
    for path in sorted(seed_dir().glob("*.txt")):
        match = re.search(r"````yaml[^\n]*\n(.*?)````", path.read_text(), re.S)
        if match:
            specs.append(yaml.safe_load(match.group(1)))
    return specs


def _to_json_schema(node: Any, schemas: dict[str, Any]) -> Any:
    """Inline $refs and turn OpenAPI's ``nullable`` into JSON-schema types."""
    if isinstance(node, list):
        return [_to_json_schema(n, schemas) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _to_json_schema(schemas[node["$ref"].rsplit("/", 1)[1]], schemas)
    out = {k: _to_json_schema(v, schemas) for k, v in node.items() if k not in ("nullable", "example")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def seed_schema(name: str) -> dict[str, Any]:
    for spec in seed_specs():
        schemas = spec.get("components", {}).get("schemas", {})
        if name in schemas:
            return _to_json_schema(schemas[name], schemas)
    raise KeyError(f"no schema {name} in the seeds")


def seed_route(method: str, path: str) -> dict[str, Any]:
    for spec in seed_specs():
        if path in spec.get("paths", {}) and method in spec["paths"][path]:
            return spec["paths"][path][method]
    raise KeyError(f"no {method} {path} in the seeds")


def assert_matches_seed(instance: Any, name: str) -> None:
    """Fail with every violation if ``instance`` breaks the seeds' schema ``name``."""
    schema = seed_schema(name)
    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # Stricter than the seed (which allows extra properties): every property
    # the seed names must be present, so a renamed field is caught too.
    if schema.get("type") == "object":
        missing = set(schema.get("properties", {})) - set(instance)
        assert not missing, f"{name} lacks {sorted(missing)}"
