"""Turn a CustomResourceDefinition's openAPIV3Schema into a strict JSON schema.

    python crd_to_jsonschema.py keda.sh_scaledobjects.yaml OUT_DIR

writes ``OUT_DIR/<kind>_<version>.json`` (lower-case kind) for every served version of the
CRD. Strict: every object schema that lists ``properties`` and says nothing of
``additionalProperties`` (nor ``x-kubernetes-preserve-unknown-fields``) gets
``additionalProperties: false``, so a misspelt field fails validation as the API server's
structural pruning would silently drop it. ``nullable`` becomes a ``null`` type,
``x-kubernetes-int-or-string`` an integer-or-string, and ``apiVersion`` and ``kind`` must be
the CRD's own. Other ``x-kubernetes-*`` keys (CEL rules among them) are dropped: JSON Schema
cannot check them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def strict(node: Any) -> Any:
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()
           if not key.startswith("x-kubernetes-") and key != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def convert(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schemas = {}
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        schema["properties"]["apiVersion"]["enum"] = [f"{group}/{version['name']}"]
        schema["properties"]["kind"]["enum"] = [kind]
        schema.setdefault("required", [])
        for key in ("apiVersion", "kind", "metadata"):
            if key not in schema["required"]:
                schema["required"].append(key)
        schemas[f"{kind.lower()}_{version['name']}.json"] = schema
    return schemas


def main() -> None:
    source, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, schema in convert(yaml.safe_load(source.read_text())).items():
        (out_dir / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        print(out_dir / name)


if __name__ == "__main__":
    main()
