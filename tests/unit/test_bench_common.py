"""benchmarks/_common.py: one percentile definition, section replacement, the machine line, JSON out, stopping a child."""

import json
import os
import socket
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import _common  # noqa: E402


def test_percentile_is_statistics_inclusive():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    assert _common.percentile(xs, 50) == statistics.median(xs)
    assert _common.percentile(xs, 99) == pytest.approx(9.75)  # rank 4.95 of 0..5: 5 + 0.95 * (10 - 5)
    assert _common.percentile([7.0], 99) == 7.0
    assert _common.percentile([], 50) is None
    with pytest.raises(ValueError):
        _common.percentile(xs, 100)


def test_write_section_replaces_only_its_own(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## Backup\n\nold numbers\n\n## Compose switch\n\nkeep me\n")
    _common.write_section(doc, "## Backup", "## Backup\n\nnew numbers\n")
    assert doc.read_text() == "# Benchmarks\n\nintro\n\n## Backup\n\nnew numbers\n\n## Compose switch\n\nkeep me\n"
    _common.write_section(doc, "## Compose switch", "## Compose switch\n\nnewer\n")
    assert doc.read_text().endswith("## Backup\n\nnew numbers\n\n## Compose switch\n\nnewer\n")
    _common.write_section(doc, "## Images", "## Images\n\nsizes\n")
    assert doc.read_text().endswith("## Compose switch\n\nnewer\n\n## Images\n\nsizes\n")


def test_write_section_creates_the_doc(tmp_path):
    doc = tmp_path / "docs" / "benchmarks.md"
    _common.write_section(doc, "## Backup", "## Backup\n\nx\n")
    assert doc.read_text() == "# Benchmarks\n\n## Backup\n\nx\n"


def test_free_port_can_be_bound():
    port = _common.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_machine_line(capsys):
    line = _common.machine(load=0.5)
    assert "-core" in line and "GiB" in line and line.endswith("load average 0.5 at start")
    _common.sayer("bench-x")("hello")
    assert capsys.readouterr().err == "bench-x: hello\n"


def test_write_json_makes_the_folder_and_writes_indented_json(tmp_path):
    out = tmp_path / "deeper" / "figures.json"
    _common.write_json(out, {"a": [1, 2]})
    assert json.loads(out.read_text()) == {"a": [1, 2]}
    assert out.read_text().endswith("\n") and "\n  " in out.read_text()


def test_stop_process_kills_a_child_that_ignores_sigterm():
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"up"  # the handler is in place
    _common.stop_process(child, 0.5)
    assert child.returncode == -9


def test_stop_process_ends_a_child_on_sigterm():
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _common.stop_process(child, 30)
    assert child.returncode == -15


def test_a_child_imports_the_tree_under_test_first_and_keeps_carried_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", "/tmp/site")
    assert _common.pythonpath_first(tmp_path).split(os.pathsep) == [str(tmp_path), "/tmp/site"]
    monkeypatch.delenv("PYTHONPATH")
    assert _common.pythonpath_first(tmp_path) == str(tmp_path)
