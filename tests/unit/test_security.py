"""serving/security.py (+ the key parsing in serving/settings.py) on a tiny app with the same middleware."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.errors import RateLimited, Unauthorized, install_error_handlers
from serving.security import ANONYMOUS, ApiKeyAuth, RateLimiter, add_security_middleware, presented_key
from serving.settings import RateLimit, Settings, SettingsError, parse_api_keys

KEYS = parse_api_keys("ops:ops-secret-123\nci:ci-secret-456", "test")


def tiny_app(**settings) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/v1/thing")
    async def thing():
        return {"payload": "x" * 4000}

    @app.get("/health")
    async def health():
        return {"ok": True}

    add_security_middleware(app, Settings(**settings))
    return app


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- keys ---------------------------------------------------------------------------------------


def test_parse_keys_with_and_without_ids_and_comments():
    keys = parse_api_keys("# ops keys\nops:ops-secret-123, plain-secret-999\n\n", "AADS_API_KEYS")
    assert [k.key_id for k in keys][0] == "ops"
    assert keys[1].key_id.startswith("key-") and keys[1].secret == "plain-secret-999"
    assert "plain-secret-999" not in repr(keys)  # the secret never shows in a repr


@pytest.mark.parametrize(
    "text, problem",
    [("ops:short", "shorter than 8"), ("a:aaaaaaaa,a:bbbbbbbb", "appears twice"), ("bad id:aaaaaaaa", "key id")],
)
def test_bad_keys_are_refused_naming_the_problem(text, problem):
    with pytest.raises(SettingsError, match=problem):
        parse_api_keys(text, "AADS_API_KEYS")


def test_keys_from_a_mounted_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# mounted secret\nfile:file-secret-1\n")
    settings = Settings.from_env({"AADS_API_KEYS": "env:env-secret-1", "AADS_API_KEYS_FILE": str(path)})
    assert [k.key_id for k in settings.api_keys] == ["env", "file"]


def test_unreadable_key_file_names_the_variable(tmp_path):
    with pytest.raises(SettingsError, match="AADS_API_KEYS_FILE"):
        Settings.from_env({"AADS_API_KEYS_FILE": str(tmp_path / "missing")})


def test_auth_returns_the_key_id_never_the_key():
    auth = ApiKeyAuth(KEYS)
    assert auth.key_id_for("ci-secret-456") == "ci"
    with pytest.raises(Unauthorized) as err:
        auth.key_id_for("ci-secret-457")
    assert err.value.code == "invalid_api_key" and "secret" not in err.value.message
    with pytest.raises(Unauthorized) as err:
        auth.key_id_for(None)
    assert err.value.code == "missing_api_key"


def test_auth_disabled_without_keys():
    assert ApiKeyAuth(()).key_id_for(None) == ANONYMOUS


def test_presented_key_from_either_header():
    assert presented_key({"x-api-key": " k1 "}) == "k1"
    assert presented_key({"authorization": "Bearer k2"}) == "k2"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({}) is None


def test_http_401_without_or_with_a_wrong_key_and_open_probes():
    client = TestClient(tiny_app(api_keys=KEYS))
    missing = client.get("/v1/thing")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert client.get("/v1/thing", headers={"X-API-Key": "nope-nope-nope"}).status_code == 401
    assert client.get("/v1/thing", headers={"Authorization": "Bearer ops-secret-123"}).status_code == 200
    assert client.get("/health").status_code == 200  # probes carry no key


# -- rate limit ---------------------------------------------------------------------------------


def test_rate_limiter_allows_a_burst_then_429_with_retry_after_then_refills():
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(requests=3, per_seconds=60), clock=clock)
    for _ in range(3):
        limiter.acquire("ops")
    with pytest.raises(RateLimited) as err:
        limiter.acquire("ops")
    assert err.value.status_code == 429 and err.value.retry_after == pytest.approx(20.0)
    limiter.acquire("ci")  # another key has its own bucket
    clock.now += 20.0
    limiter.acquire("ops")  # one token back after 60/3 s
    with pytest.raises(RateLimited):
        limiter.acquire("ops")


def test_rate_limiter_forgets_idle_callers(monkeypatch):
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(requests=1, per_seconds=1), clock=clock)
    monkeypatch.setattr(RateLimiter, "MAX_CALLERS", 10)
    for i in range(11):
        limiter.acquire(f"c{i}")
    clock.now += 5
    limiter.acquire("late")
    assert len(limiter._buckets) <= 2


def test_http_429_per_key_with_retry_after_header():
    client = TestClient(tiny_app(api_keys=KEYS, rate_limit=RateLimit(requests=2, per_seconds=3600)))
    ops = {"X-API-Key": "ops-secret-123"}
    assert [client.get("/v1/thing", headers=ops).status_code for _ in range(2)] == [200, 200]
    limited = client.get("/v1/thing", headers=ops)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"
    assert client.get("/v1/thing", headers={"X-API-Key": "ci-secret-456"}).status_code == 200


# -- CORS and gzip ------------------------------------------------------------------------------


def test_cors_only_for_configured_origins():
    client = TestClient(tiny_app(cors_origins=("https://farm.example",)))
    allowed = client.get("/v1/thing", headers={"Origin": "https://farm.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://farm.example"
    other = client.get("/v1/thing", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = client.options(
        "/v1/thing",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400


def test_no_cors_headers_when_no_origin_is_configured():
    response = TestClient(tiny_app()).get("/v1/thing", headers={"Origin": "https://farm.example"})
    assert "access-control-allow-origin" not in response.headers


def test_gzip_when_the_client_accepts_it():
    client = TestClient(tiny_app())
    zipped = client.get("/v1/thing", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.json()["payload"] == "x" * 4000
    plain = client.get("/v1/thing", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
