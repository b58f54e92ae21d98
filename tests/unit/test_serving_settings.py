"""serving/settings.py: env → validated Settings; a bad value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.settings import MB, RateLimit, Settings, SettingsError


def test_defaults_match_the_image_contract():
    s = Settings.from_env({})
    assert (s.host, s.port) == ("0.0.0.0", 8000)
    assert s.model_dir == Path("/models") and s.manifest_dir == Path("/app/version")
    assert s.max_upload_bytes == 10 * MB
    assert not s.auth_enabled and s.rate_limit is None and s.cors_origins == ()


def test_values_are_read_and_converted():
    s = Settings.from_env(
        {
            "AADS_PORT": "9001",
            "AADS_MAX_BATCH_SIZE": "16",
            "AADS_MAX_WAIT_MS": "2.5",
            "AADS_MAX_UPLOAD_BYTES": "5MB",
            "AADS_RATE_LIMIT": "120/minute",
            "AADS_CORS_ORIGINS": "https://a.example, http://localhost:3000/",
            "AADS_BUILD_VERSION": "v5.5.4-dinov3",
            "AADS_BUILD_REVISION": "abc123",
            "AADS_IMAGE_DIGEST": "sha256:00",
            "AADS_DEVICE": "cuda:0",
        }
    )
    assert s.port == 9001 and s.max_batch_size == 16 and s.max_wait_ms == 2.5
    assert s.max_upload_bytes == 5 * MB
    assert s.rate_limit == RateLimit(requests=120, per_seconds=60)
    assert s.cors_origins == ("https://a.example", "http://localhost:3000")
    assert s.build_labels == {"version": "v5.5.4-dinov3", "revision": "abc123", "image_digest": "sha256:00"}
    assert s.device == "cuda:0"


@pytest.mark.parametrize(
    "name, value",
    [
        ("AADS_PORT", "eighty"),
        ("AADS_PORT", "70000"),
        ("AADS_MAX_BATCH_SIZE", "0"),
        ("AADS_MAX_WAIT_MS", "-1"),
        ("AADS_MAX_UPLOAD_BYTES", "ten megabytes"),
        ("AADS_RATE_LIMIT", "fast"),
        ("AADS_CORS_ORIGINS", "farm.example"),
        ("AADS_DEVICE", "tpu"),
        ("AADS_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_value_names_the_variable(name, value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value) and value in str(err.value)


@pytest.mark.parametrize("text, expected", [("10/s", (10, 1)), ("5/30s", (5, 30)), ("100/hour", (100, 3600))])
def test_rate_limit_forms(text, expected):
    limit = Settings.from_env({"AADS_RATE_LIMIT": text}).rate_limit
    assert (limit.requests, limit.per_seconds) == expected


def test_main_reports_a_bad_setting_in_one_line(monkeypatch, capsys):
    from serving.__main__ import main

    monkeypatch.setenv("AADS_MAX_BATCH_SIZE", "lots")
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: AADS_MAX_BATCH_SIZE")
