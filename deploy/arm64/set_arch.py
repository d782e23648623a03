"""Label a saved image arm64: ``docker save IMG | python set_arch.py | docker load``.

Docker's classic builder (the one Debian's docker.io ships, without buildx) runs an arm64 base's
RUN steps under qemu fine, but records the host's architecture in the image it builds, so an
arm64 host would see "linux/amd64" (and warn or refuse). This rewrites the image config's
``architecture`` to arm64 (variant v8) and renames the config by its new digest; layers are
copied untouched. Reads a ``docker save`` archive on stdin, writes one on stdout.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile


def main() -> int:
    held: dict[str, bytes] = {}  # the small JSON files, rewritten at the end
    with (
        tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as source,
        tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as target,
    ):
        for member in source:
            if member.isfile() and member.name.endswith(".json") and "/" not in member.name:
                held[member.name] = source.extractfile(member).read()  # type: ignore[union-attr]
                continue
            target.addfile(member, source.extractfile(member) if member.isfile() else None)
        manifest = json.loads(held.pop("manifest.json"))
        for image in manifest:
            config = json.loads(held.pop(image["Config"]))
            config["architecture"], config["variant"] = "arm64", "v8"
            raw = json.dumps(config, separators=(",", ":")).encode()
            image["Config"] = hashlib.sha256(raw).hexdigest() + ".json"
            held[image["Config"]] = raw
        held["manifest.json"] = json.dumps(manifest).encode()
        for name, raw in held.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            target.addfile(info, io.BytesIO(raw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
