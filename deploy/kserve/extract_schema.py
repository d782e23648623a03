"""Extract the KServe CRD schema the manifests here are checked against (tests/test_deploy.py).

    python deploy/kserve/extract_schema.py [KSERVE_WHEEL]

KServe's Python SDK is generated from its CRDs' OpenAPI schema: each model class lists its fields
(``attribute_map``: attribute -> JSON name) and their types (``openapi_types``). This reads those
two literals from the wheel's source with ``ast`` (nothing is imported: the SDK pulls in FastAPI,
pandas and more) for every class reachable from ``InferenceService`` and ``ServingRuntime``, and
writes them to kserve-<version>-schema.json beside this script. Kubernetes' own types
(``V1Container``...) are left as names: the test checks those with kubernetes-validate.
Without a wheel argument it downloads ``kserve==VERSION`` (no dependencies) with pip.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "0.21.0"
ROOTS = ("V1beta1InferenceService", "V1alpha1ServingRuntime")
HERE = Path(__file__).resolve().parent
LITERALS = ("openapi_types", "attribute_map")


def model_classes(wheel: Path) -> dict[str, dict[str, str]]:
    """Every model class of the wheel: {class: {json field: openapi type}}."""
    classes: dict[str, dict[str, str]] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not re.fullmatch(r"kserve/models/\w+\.py", name):
                continue
            for node in ast.parse(archive.read(name)).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                found: dict[str, dict[str, str]] = {}
                for item in node.body:
                    if not isinstance(item, ast.Assign):
                        continue
                    target = item.targets[0]
                    if isinstance(target, ast.Name) and target.id in LITERALS:
                        found[target.id] = ast.literal_eval(item.value)
                if len(found) == 2:
                    json_name = found["attribute_map"]
                    classes[node.name] = {
                        json_name[attr]: kind for attr, kind in found["openapi_types"].items()
                    }
    return classes


def reachable(classes: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    keep: dict[str, dict[str, str]] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep or name not in classes:
            continue
        keep[name] = classes[name]
        for kind in classes[name].values():
            todo.extend(re.findall(r"V1\w+", kind))
    return dict(sorted(keep.items()))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1:
            wheel = Path(sys.argv[1])
        else:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                 f"kserve=={VERSION}"],
                check=True,
            )  # fmt: skip
            wheel = next(Path(tmp).glob("kserve-*.whl"))
        classes = reachable(model_classes(wheel))
    schema = {"kserve": VERSION, "roots": list(ROOTS), "classes": classes}
    out = HERE / f"kserve-{VERSION}-schema.json"
    out.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(schema['classes'])} classes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
