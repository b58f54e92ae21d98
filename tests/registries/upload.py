"""Put a tiny image straight into a registry over its v2 API (no engine): a config blob, one layer
blob and a schema-2 manifest. Returns the manifest digest the registry answers with.

The caller hands over the Authorization header value (basic, or a Bearer token it got from the
issuer itself), so these uploads do not depend on the client under test.
"""

from __future__ import annotations

import hashlib
import json
import ssl

import httpx

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload_image(host: str, name: str, tag: str, *, authorization: str, cafile: str, note: str = "") -> str:
    base = f"https://{host}/v2/{name}"
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"note": note}},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = f"aads test layer {note}".encode()
    with httpx.Client(verify=ssl.create_default_context(cafile=cafile), headers={"Authorization": authorization}, timeout=30) as http:
        for blob in (config, layer):
            start = http.post(f"{base}/blobs/uploads/")
            start.raise_for_status()
            location = start.headers["Location"]
            if location.startswith("/"):
                location = f"https://{host}{location}"
            sep = "&" if "?" in location else "?"  # the upload URL carries its own state in the query
            http.put(f"{location}{sep}digest={_digest(blob)}", content=blob,
                     headers={"Content-Type": "application/octet-stream"}).raise_for_status()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_V2,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                       "digest": _digest(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer),
                        "digest": _digest(layer)}],
        }).encode()
        r = http.put(f"{base}/manifests/{tag}", content=manifest, headers={"Content-Type": MANIFEST_V2})
        r.raise_for_status()
        return r.headers["Docker-Content-Digest"]
