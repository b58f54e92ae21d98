"""A refused bf16 reloads the set only when the model was already cast.

A set whose build recorded a held-out bf16/fp32 agreement below the target is refused at start
without any bf16 pass: the model is still the fp32 one it was built as, so it is served as is
(reading and building a 1.2 GB ViT-L/16 again cost seconds of the start). A refusal after the
golden pass (the backbone was cast to bf16, its weights rounded) still reloads from the files.
"""

import torch

from serving import pipeline as pipeline_mod
from serving import precision
from serving.pipeline import Pipeline


def _count_backbone_loads(monkeypatch) -> list:
    calls = []
    real = pipeline_mod.load_backbone

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_mod, "load_backbone", counting)
    return calls


def test_a_recorded_refusal_serves_the_fp32_model_it_built(tiny_model_set, monkeypatch):
    ms = tiny_model_set("dinov3")
    reference = Pipeline.load(ms.path, ms.manifest(), device="cpu", dtype="float32")
    images, _ = reference.golden_images(with_decisions=True)
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(precision, "recorded_agreement", lambda model_set: (0.7, 10))
    loads = _count_backbone_loads(monkeypatch)
    pipe = Pipeline.load(ms.path, ms.manifest(), device="cpu")
    assert len(loads) == 1
    assert pipe.info["dtype"] == "float32" and pipe.dtype == torch.float32
    assert "0.7000 on 10 held-out images" in pipe.info["precision"]["refused"]
    assert all(p.dtype == torch.float32 for p in pipe.model.parameters())
    assert pipe.decisions(images) == reference.decisions(images)


def test_a_refusal_after_the_golden_pass_reloads_fp32_weights(tiny_model_set, monkeypatch):
    ms = tiny_model_set("dinov3")
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(precision, "recorded_agreement", lambda model_set: None)
    monkeypatch.setattr(precision, "decisions_agreement", lambda a, b: 0.5)
    loads = _count_backbone_loads(monkeypatch)
    pipe = Pipeline.load(ms.path, ms.manifest(), device="cpu")
    assert len(loads) == 2  # the cast model's weights were rounded: read them again
    assert pipe.info["dtype"] == "float32" and "0.5000" in pipe.info["precision"]["refused"]
    assert all(p.dtype == torch.float32 for p in pipe.model.parameters())
