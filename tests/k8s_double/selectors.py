"""Label and field selectors as the API server parses them (?labelSelector=, ?fieldSelector=).

Labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated (AND).
Fields: `path=v`, `path==v`, `path!=v` over dotted paths (metadata.name, metadata.namespace,
status.phase, ...), the ones the real server supports for these kinds.
"""

from __future__ import annotations

import re
from typing import Any, Callable

Matcher = Callable[[dict[str, Any]], bool]


class SelectorError(ValueError):
    pass


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_SET = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ = re.compile(r"^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$")
_EXISTS = re.compile(r"^(!?)\s*([\w./-]+)$")


def label_selector(text: str | None) -> Matcher:
    if not text:
        return lambda obj: True
    reqs: list[Callable[[dict[str, str]], bool]] = []
    for part in _split_top(text):
        if m := _SET.match(part):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                reqs.append(lambda l, k=key, vs=values: l.get(k) in vs)
            else:
                reqs.append(lambda l, k=key, vs=values: l.get(k) not in vs)
        elif m := _EQ.match(part):
            key, op, value = m.groups()
            if op == "!=":
                reqs.append(lambda l, k=key, v=value: l.get(k) != v)
            else:
                reqs.append(lambda l, k=key, v=value: k in l and l[k] == v)
        elif m := _EXISTS.match(part):
            neg, key = m.groups()
            reqs.append((lambda l, k=key: k not in l) if neg else (lambda l, k=key: k in l))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r(labels) for r in reqs)

    return match


FIELDS = {"metadata.name", "metadata.namespace", "status.phase", "spec.nodeName"}


def field_selector(text: str | None) -> Matcher:
    if not text:
        return lambda obj: True
    reqs = []
    for part in _split_top(text):
        m = re.match(r"^([\w.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        path, op, value = m.groups()
        if path not in FIELDS:
            raise SelectorError(f'field label not supported: {path}')
        reqs.append((path.split("."), op == "!=", value))

    def get(obj: dict[str, Any], keys: list[str]) -> str:
        for k in keys:
            obj = obj.get(k) if isinstance(obj, dict) else None
        return "" if obj is None else str(obj)

    return lambda obj: all((get(obj, keys) == value) != neg for keys, neg, value in reqs)


def match_labels(selector: dict[str, Any] | None) -> Matcher:
    """A LabelSelector object ({matchLabels, matchExpressions}) as a matcher."""
    selector = selector or {}
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], ",".join(e.get("values") or [])
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[op])
    return label_selector(",".join(parts))
