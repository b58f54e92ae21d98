"""scripts/gpu_check.py: the GPU check runs end to end on the CPU (--device cpu --quick) and keeps its budget."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.precision import cpu_native_bf16

ROOT = Path(__file__).resolve().parents[2]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "scripts/gpu_check.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_quick_cpu_run_builds_serves_compares_and_measures(tmp_path):
    r = run("--device", "cpu", "--quick", "--out", tmp_path, "--budget-s", 400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    (entry,) = report["backbones"]
    assert entry["model_id"] == "facebook/dinov3-vits16-pretrain-lvd1689m" and report["random_weights"] is True
    assert entry["http"]["ok"] and entry["http"]["ready_seconds"] > 0 and entry["http"]["version"] == "v5.5.4-dinov3"
    # Each resent image is answered by the response cache, and the start-up phases come from /metrics.
    assert entry["http"]["cache"]["x_cache"] == ["miss", "hit"] * 4
    assert {"read_weights", "build_model", "warmup"} <= set(entry["http"]["ready_phases"])
    assert "process_start" not in entry["http"]["ready_phases"]  # the check's own process, not a fresh one
    # The dtype the service picks on this CPU: bf16 where it has avx512_bf16/AMX, else fp32 (nothing to compare).
    expected = "bfloat16" if cpu_native_bf16() else "float32"
    assert entry["dtype"]["serving_dtype"] == expected
    assert entry["dtype"]["agreement"] == 1.0 if expected == "float32" else 0 <= entry["dtype"]["agreement"] <= 1
    assert all(isinstance(entry["throughput"]["images_per_s"][b], float) for b in ("1", "8", "32"))
    batcher = entry["batcher"]
    assert batcher["batched"]["ok"] == batcher["naive"]["ok"] == 32 * batcher["requests_per_client"]
    assert batcher["batched"]["max_batch_size"] == 32 and batcher["naive"]["max_batch_size"] == 1
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| DINOv3 ViT-S/16 | v5.5.4-dinov3 |" in md
    assert not report["failures"]


def test_the_time_budget_skips_rather_than_overruns(tmp_path):
    r = run("--device", "cpu", "--quick", "--out", tmp_path, "--budget-s", 1, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["skipped"] == ["DINOv3 ViT-S/16: everything (time budget)"]
    assert "Skipped (time budget or error)" in (tmp_path / "gpu_check.md").read_text()


def test_no_cuda_is_one_clear_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    r = run("--out", tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: no CUDA device is visible (run with --device cpu --quick to test the script)"]


def test_a_transformers_too_old_for_the_adapters_is_one_clear_line(tmp_path, monkeypatch, capsys):
    # The GPU host's own transformers 5.17 has no q_proj/v_proj in DINOv2: the check must say so up
    # front instead of failing one backbone deep with a PEFT traceback.
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    monkeypatch.setattr(gpu_check, "MIN_TRANSFORMERS", (99, 0))
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: transformers ") and "carry a newer wheel" in err and err.count("\n") == 1
    assert not (tmp_path / "gpu_check.json").exists()
