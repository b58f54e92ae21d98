"""The three PATCH content types of the API server, for the fields a rollout touches.

- application/json-patch+json (RFC 6902): what `kubectl rollout undo` sends.
- application/merge-patch+json (RFC 7386): maps merge, null deletes, lists replace.
- application/strategic-merge-patch+json: like merge patch, but lists with a patch merge key
  merge element-wise (containers by name, env by name, ...), `$patch: replace|delete` directives.
  The merge keys below are those of the Kubernetes Go types (`patchMergeKey` struct tags).
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    pass


# Path suffix (list field name, in the pod template / pod spec) -> merge key.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Lists of scalars merged as sets in strategic merge (patchStrategy: merge on primitive lists).
SET_LISTS = {"finalizers"}


# ---- RFC 7386 --------------------------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# ---- strategic merge -------------------------------------------------------------------------
def strategic_merge(target: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        if directive == "delete":
            return None
        out = dict(target) if isinstance(target, dict) else {}
        for k, v in patch.items():
            if k.startswith("$setElementOrder/") or k.startswith("$deleteFromPrimitiveList/") or k == "$retainKeys":
                continue  # ordering/retain hints: order is kept as the patch lists it below
            if v is None:
                out.pop(k, None)
                continue
            merged = strategic_merge(out.get(k), v, k)
            if merged is None and isinstance(v, dict) and v.get("$patch") == "delete":
                out.pop(k, None)
            else:
                out[k] = merged
        return out
    if isinstance(patch, list):
        key = MERGE_KEYS.get(field or "")
        if key and all(isinstance(x, dict) for x in patch):
            return _merge_list_by_key(target if isinstance(target, list) else [], patch, key)
        if field in SET_LISTS:
            base = list(target or [])
            return base + [x for x in patch if x not in base]
        return copy.deepcopy(patch)
    return copy.deepcopy(patch)


def _merge_list_by_key(target: list, patch: list, key: str) -> list:
    if any(x.get("$patch") == "replace" for x in patch):
        return [{k: v for k, v in x.items() if k != "$patch"} for x in patch if x.get("$patch") != "replace"]
    out = [copy.deepcopy(x) for x in target]
    for item in patch:
        if key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        idx = next((i for i, x in enumerate(out) if x.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            out[idx] = strategic_merge(out[idx], item)
    return out


# ---- RFC 6902 --------------------------------------------------------------------------------
def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for p in parts:
        if isinstance(doc, list):
            doc = doc[int(p)]
        elif isinstance(doc, dict):
            if p not in doc:
                raise PatchError(f"path /{'/'.join(parts)}: missing key {p!r}")
            doc = doc[p]
        else:
            raise PatchError(f"path /{'/'.join(parts)} does not exist")
    return doc


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    for op in ops:
        kind = op.get("op")
        parts = _pointer(op.get("path", ""))
        try:
            if kind == "test":
                if _walk(doc, parts) != op.get("value"):
                    raise PatchError(f"testing value {op.get('path')} failed")
                continue
            if kind in ("move", "copy"):
                value = copy.deepcopy(_walk(doc, _pointer(op["from"])))
                if kind == "move":
                    doc = _remove(doc, _pointer(op["from"]))
                doc = _add(doc, parts, value)
            elif kind == "add":
                doc = _add(doc, parts, copy.deepcopy(op["value"]))
            elif kind == "remove":
                doc = _remove(doc, parts)
            elif kind == "replace":
                _walk(doc, parts)  # must exist (RFC 6902 4.3)
                doc = _remove(doc, parts)
                doc = _add(doc, parts, copy.deepcopy(op["value"]))
            else:
                raise PatchError(f"unexpected kind of JSON patch operation: {kind!r}")
        except (KeyError, IndexError, ValueError) as e:
            if isinstance(e, PatchError):
                raise
            raise PatchError(f"{kind} {op.get('path')}: {e}") from None
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            i = int(last)
            if not 0 <= i <= len(parent):
                raise PatchError(f"add {last}: index out of range")
            parent.insert(i, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"cannot add to a {type(parent).__name__}")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return None
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        parent.pop(int(last))
    elif isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"remove /{'/'.join(parts)}: missing key {last!r}")
        del parent[last]
    return doc
