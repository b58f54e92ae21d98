"""The rendered edge config gives a slot's /ready check longer than the check interval to answer.

Without `timeout check`, HAProxy gives a check `inter` (1 s) in all; a slot on a starved CPU then
fails two checks in a row and the edge marks the only serving slot DOWN (503s). The real HAProxy
proof is tests/integration/test_edge_check_timeout.py; this one reads the config without an engine.
"""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.backends.compose.haproxy import render_config

TEMPLATE = Path(__file__).resolve().parents[2] / "images" / "edge" / "haproxy.cfg.tmpl"


def seconds(value: str) -> float:
    """An HAProxy time ("250ms", "5s", "1m"; a bare number is milliseconds) in seconds."""
    m = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    assert m, f"not an HAProxy time: {value!r}"
    unit = {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return int(m.group(1)) * unit


def backend_lines(text: str, name: str) -> list[list[str]]:
    lines, inside = [], False
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if not raw[0].isspace():
            inside = words[:2] == ["backend", name]
            continue
        if inside:
            lines.append(words)
    return lines


def test_a_check_may_take_longer_than_the_check_interval():
    for live in ("blue", "green"):
        lines = backend_lines(render_config(TEMPLATE.read_text(), live), "slots")
        default_server = next(w for w in lines if w[0] == "default-server")
        inter = seconds(default_server[default_server.index("inter") + 1])
        check = [w[2] for w in lines if w[:2] == ["timeout", "check"]]
        assert check, "backend slots has no `timeout check`: a check would time out after inter"
        assert seconds(check[0]) >= 5 * inter, (check[0], inter)
        assert seconds(check[0]) >= 5.0, check[0]


def test_the_written_config_is_readable_by_the_edge_whatever_the_umask(tmp_path):
    # The edge runs as the haproxy user: a 0600 file (an operator's umask 077) would stop it reading it.
    import os

    from orchestrator.backends.compose.haproxy import write_config

    old = os.umask(0o077)
    try:
        write_config(tmp_path / "haproxy.cfg", render_config(TEMPLATE.read_text(), "blue"))
    finally:
        os.umask(old)
    assert (tmp_path / "haproxy.cfg").stat().st_mode & 0o777 == 0o644
