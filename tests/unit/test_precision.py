"""serving.precision: bf16 by capability, forced by setting, and refused when it decides unlike fp32."""

import logging

import pytest
import torch

from serving import precision
from serving.pipeline import Pipeline
from serving.settings import Settings, SettingsError

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse sse2 avx2 avx512f {extra}
bogomips\t: 4200.00
"""


@pytest.mark.parametrize("extra,flag", [("", None), ("avx512_bf16", "avx512_bf16"), ("amx_tile amx_bf16", "amx_bf16")])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, extra, flag):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO.format(extra=extra))
    assert precision.cpu_native_bf16(precision.cpu_flags(info)) == flag


def test_an_unreadable_cpuinfo_means_no_bf16(tmp_path):
    assert precision.cpu_flags(tmp_path / "absent") == frozenset()


def test_auto_follows_the_hardware_and_a_forced_dtype_wins():
    cpu = torch.device("cpu")
    assert precision.choose(cpu, "auto", flags=frozenset({"avx512_bf16"})).dtype == torch.bfloat16
    assert precision.choose(cpu, "auto", flags=frozenset({"avx2"})).dtype == torch.float32
    forced = precision.choose(cpu, "float32", "AADS_PRECISION", flags=frozenset({"amx_bf16"}))
    assert forced.dtype == torch.float32 and forced.reason == "forced by AADS_PRECISION"
    assert precision.choose(cpu, "bfloat16", flags=frozenset()).dtype == torch.bfloat16
    assert precision.choose(torch.device("meta"), "auto", flags=frozenset({"avx512_bf16"})).dtype == torch.float32


@pytest.mark.parametrize("value,expected", [("auto", "auto"), ("fp32", "float32"), ("BF16", "bfloat16"),
                                            ("bfloat16", "bfloat16"), ("", None)])
def test_the_precision_setting(value, expected):
    assert Settings.from_env({"AADS_PRECISION": value}).precision == expected


def test_a_bad_precision_setting_names_the_variable():
    with pytest.raises(SettingsError, match="AADS_PRECISION='fp16'"):
        Settings.from_env({"AADS_PRECISION": "fp16"})


def test_agreement_counts_equal_decisions():
    a = [("accept", None, "corn", "healthy")] * 199 + [("review", "low_confidence", "corn", "healthy")]
    b = [("accept", None, "corn", "healthy")] * 200
    assert precision.decisions_agreement(a, b) == 0.995
    with pytest.raises(ValueError):
        precision.decisions_agreement(a, b[:3])


def test_the_recorded_agreement_is_read_only_for_a_bf16_build():
    low = {"dtype_agreement": {"serving_dtype": "bfloat16", "agreement": 0.99, "images": 200}}
    assert precision.recorded_agreement(low) == (0.99, 200)
    assert precision.recorded_agreement({"dtype_agreement": {"serving_dtype": "float32", "agreement": 1.0}}) is None
    assert precision.recorded_agreement({}) is None


def _bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: frozenset({"avx512_bf16"}))
    # As a set built without bf16: the check runs at start, on the golden images.
    monkeypatch.setattr(precision, "recorded_agreement", lambda model_set: None)


@pytest.mark.parametrize("recorded,dtype", [((0.99, 20), "float32"), ((0.995, 200), "bfloat16")])
def test_a_recorded_held_out_agreement_decides_without_a_second_run(tiny_model_set, monkeypatch, recorded, dtype):
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(precision, "recorded_agreement", lambda model_set: recorded)
    monkeypatch.setattr(precision, "decisions_agreement", lambda a, b: pytest.fail("no golden run needed"))
    ms = tiny_model_set("dinov2")
    pipe = Pipeline.load(ms.path, ms.manifest(), device="cpu")
    info = pipe.info["precision"]
    assert pipe.info["dtype"] == info["dtype"] == dtype
    assert info["check"] == {"heldout_agreement": recorded[0], "heldout_images": recorded[1]}
    assert (info["refused"] is None) == (dtype == "bfloat16")
    if info["refused"]:
        assert "0.9900 on 20 held-out images, below 0.995" in info["refused"]


def test_auto_serves_bf16_after_checking_the_golden_images(tiny_model_set, monkeypatch):
    _bf16_cpu(monkeypatch)
    ms = tiny_model_set("dinov3")
    seen = []
    real = precision.decisions_agreement
    monkeypatch.setattr(precision, "decisions_agreement", lambda a, b: seen.append((a, b)) or real(a, b))
    pipe = Pipeline.load(ms.path, ms.manifest(), device="cpu")
    (got, reference), = seen
    assert len(got) == len(pipe.golden_images()) > 0
    if got == reference:  # a tiny random set may differ; the refusal path is tested below
        assert pipe.info["precision"]["dtype"] == "bfloat16" and pipe.info["dtype"] == "bfloat16"
        assert pipe.info["precision"]["check"] == {"golden_agreement": 1.0, "golden_images": len(got)}
        assert next(pipe.model.parameters()).dtype == torch.bfloat16
        assert pipe.warmed  # the check ran router and adapters: no second warm-up pass


def test_low_agreement_refuses_bf16_with_one_log_line(tiny_model_set, monkeypatch, caplog):
    _bf16_cpu(monkeypatch)
    monkeypatch.setattr(precision, "decisions_agreement", lambda a, b: 0.99)
    ms = tiny_model_set("dinov3")
    with caplog.at_level(logging.WARNING, logger="serving.pipeline"):
        pipe = Pipeline.load(ms.path, ms.manifest(), device="cpu")
    info = pipe.info["precision"]
    assert pipe.info["dtype"] == "float32" and info["dtype"] == "float32"
    assert next(pipe.model.parameters()).dtype == torch.float32
    assert "0.9900" in info["refused"] and info["check"]["golden_agreement"] == 0.99
    lines = [r.getMessage() for r in caplog.records if "not bfloat16" in r.getMessage()]
    assert len(lines) == 1 and "below 0.995" in lines[0]
    assert len(pipe.diagnose(pipe.golden_images()[:1], [None])) == 1


def test_forced_fp32_skips_the_check(tiny_model_set, monkeypatch):
    _bf16_cpu(monkeypatch)
    monkeypatch.setattr(precision, "decisions_agreement", lambda a, b: pytest.fail("no check for fp32"))
    ms = tiny_model_set("dinov2")
    pipe = Pipeline.load(ms.path, ms.manifest(), device="cpu", dtype="float32", dtype_source="AADS_PRECISION")
    assert pipe.info["precision"]["dtype"] == "float32"
    assert pipe.info["precision"]["reason"] == "forced by AADS_PRECISION"


def test_a_set_without_golden_images_is_served_in_fp32(tiny_model_set, monkeypatch, tmp_path):
    import shutil

    _bf16_cpu(monkeypatch)
    ms = tiny_model_set("dinov2")
    copy = tmp_path / "set"
    shutil.copytree(ms.path, copy)
    shutil.rmtree(copy / "golden")
    pipe = Pipeline.load(copy, ms.manifest(), device="cpu", verify=False)
    assert pipe.info["dtype"] == "float32" and "no golden images" in pipe.info["precision"]["refused"]


def test_golden_decisions_recorded_in_fp32_need_one_pass_only(tiny_model_set, monkeypatch):
    _bf16_cpu(monkeypatch)
    ms = tiny_model_set("dinov3")
    passes = []
    real = Pipeline.decisions
    monkeypatch.setattr(Pipeline, "decisions", lambda self, images, *a: passes.append(self.dtype) or real(self, images, *a))
    pipe = Pipeline.load(ms.path, ms.manifest(), device="cpu")
    assert pipe.model_set["golden"]["dtype"] == "float32"  # built sets record golden decisions in fp32
    assert passes == [torch.bfloat16]  # compared with the recorded decisions, no fp32 rerun


def test_the_builder_says_when_an_agreement_is_too_thin_to_trust():
    # On the H100, a 30-image held-out check passed 30/30 while 57 images gave 0.93: too few to show 99.5%.
    from serving.build_model_set import MIN_IMAGES_TO_SHOW_TARGET, agreement_warning

    assert MIN_IMAGES_TO_SHOW_TARGET == 200  # one differing decision in 199 images is below 0.995
    thin = {"serving_dtype": "bfloat16", "agreement": 1.0, "images": 30, "meets_target": True}
    assert "only 30 held-out images" in agreement_warning(thin)
    firm = {**thin, "images": 200}
    assert agreement_warning(firm) is None
    low = {"serving_dtype": "bfloat16", "agreement": 0.99, "images": 400, "meets_target": False}
    assert "0.9900 of 400" in agreement_warning(low) and "float32" in agreement_warning(low)
    assert agreement_warning({"serving_dtype": "float32", "agreement": 1.0, "images": 5}) is None  # nothing compared
