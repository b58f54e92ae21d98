"""Supply chain: the image installs every package by sha256, its public base by digest, the local
base is signature-checked and verified after bootstrap, the release workflow pins its actions by
commit and uses PyTorch's index in one step only."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from orchestrator import build

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images" / "serving"
HASHED = re.compile(r"^([A-Za-z0-9_.+-]+)==([^ ]+) --hash=sha256:[0-9a-f]{64}$")


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def torch_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in (IMAGES / "torch-requirements.txt").read_text().splitlines():
        m = re.fullmatch(r"# \[(\w+)\]", line.strip())
        if m:
            current = sections.setdefault(m.group(1), [])
        elif current is not None and line.strip() and not line.startswith("#"):
            current.append(line.strip())
    return sections


def test_every_image_requirement_is_pinned_with_its_sha256():
    lines = requirement_lines(IMAGES / "requirements.txt")
    assert len(lines) > 20
    bad = [line for line in lines if not HASHED.match(line)]
    assert bad == [], bad
    assert not any(line.startswith("torch==") for line in lines)


def test_the_pins_are_what_the_tests_ran_against():
    spec = importlib.util.spec_from_file_location("pin", REPO / "scripts" / "pin_image_requirements.py")
    pin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pin)
    pinned = {HASHED.match(line).group(1): HASHED.match(line).group(2)
              for line in requirement_lines(IMAGES / "requirements.txt")}
    assert pinned == pin.venv_pins(), "stale pins: rerun scripts/pin_image_requirements.py"


def test_torch_is_pinned_by_hash_for_both_variants():
    sections = torch_sections()
    assert set(sections) == {"cpu", "cuda"}
    for lines in sections.values():
        assert lines and all(HASHED.match(line) for line in lines), lines
    assert [line.split(" ")[0] for line in sections["cpu"]] == [f"torch=={build.CUDA_TORCH.split('==')[1]}+cpu"]
    assert sections["cuda"][0].startswith(build.CUDA_TORCH + " ")
    cuda_names = {HASHED.match(line).group(1) for line in sections["cuda"]}
    assert any(n.startswith("nvidia-") for n in cuda_names)  # the CUDA runtime wheels are pinned too


def test_the_cpu_hash_is_the_local_wheels():
    wheels = sorted(Path(d) / f for d in build.WHEEL_DIRS if Path(d).is_dir()
                    for f in [p.name for p in Path(d).glob(build.CPU_WHEEL_GLOB)])
    if not wheels:
        pytest.skip(f"no {build.CPU_WHEEL_GLOB} on this machine")
    want = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    assert torch_sections()["cpu"][0].endswith(f"--hash=sha256:{want}")


def test_the_dockerfile_installs_only_with_hashes_and_bases_on_a_digest():
    text = (IMAGES / "Dockerfile").read_text()
    installs = re.findall(r"bin/pip install [^\n]*(?:\\\n[^\n]*)*", text)
    assert installs and all("--require-hashes" in i for i in installs), installs
    default = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", default)
    assert build.DEFAULT_BASE["cuda"] == default
    assert "torch-requirements.txt" in text


def test_the_local_base_is_signature_checked_and_verified_after_bootstrap():
    text = (REPO / "scripts" / "engine.sh").read_text()
    assert re.search(r"debootstrap --keyring=", text)
    assert "dpkg --verify" in text


def workflow() -> dict:
    return yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())


def test_every_action_is_pinned_by_commit_sha():
    uses = [step["uses"] for job in workflow()["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{ref}: pin actions by commit SHA"


def test_the_extra_package_index_is_used_by_the_torch_step_only():
    wf = workflow()
    assert not any("INDEX" in k for k in (wf.get("env") or {}))
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    using = [s["name"] for s in steps if "download.pytorch.org" in yaml.safe_dump(s)]
    assert len(using) == 1 and "torch" in using[0].lower(), using
