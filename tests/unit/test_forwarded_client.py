"""The real client behind the edge (X-Forwarded-For from trusted proxies only) and the failed-key limit."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving.errors import install_error_handlers
from serving.security import TrustedProxies, add_forwarded_client, add_security_middleware, forwarded_client
from serving.settings import RateLimit, Settings, parse_api_keys

KEYS = parse_api_keys("ops:ops-secret-123", "test")


def tiny_app(client_addr: str = "testclient", **settings) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/v1/whoami")
    async def whoami(request: Request):
        return {"client": request.client.host if request.client else None}

    s = Settings(**settings)
    add_security_middleware(app, s)
    add_forwarded_client(app, s)

    async def asgi(scope, receive, send):  # TestClient's peer is "testclient"; pose as `client_addr`
        if scope["type"] == "http":
            scope["client"] = (client_addr, 50000)
        await app(scope, receive, send)

    return asgi


def test_forwarded_for_is_believed_from_a_trusted_proxy_only():
    edge = TestClient(tiny_app("172.20.0.5", trusted_proxies=("172.20.0.0/16",)))
    assert edge.get("/v1/whoami", headers={"X-Forwarded-For": "203.0.113.9"}).json()["client"] == "203.0.113.9"
    # Several values: the last one is what the nearest (trusted) proxy saw; the rest is the client's word.
    got = edge.get("/v1/whoami", headers={"X-Forwarded-For": "1.1.1.1, 203.0.113.9"}).json()["client"]
    assert got == "203.0.113.9"
    assert edge.get("/v1/whoami", headers={"X-Forwarded-For": "not-an-ip"}).json()["client"] == "172.20.0.5"
    stranger = TestClient(tiny_app("10.9.9.9", trusted_proxies=("172.20.0.0/16",)))
    assert stranger.get("/v1/whoami", headers={"X-Forwarded-For": "203.0.113.9"}).json()["client"] == "10.9.9.9"
    untrusting = TestClient(tiny_app("172.20.0.5"))
    assert untrusting.get("/v1/whoami", headers={"X-Forwarded-For": "203.0.113.9"}).json()["client"] == "172.20.0.5"


def test_a_trusted_host_name_is_resolved_again_when_the_edge_moves():
    addresses = {"edge": {"172.20.0.5"}}
    calls = []
    now = [100.0]

    def resolve(host):
        calls.append(host)
        return set(addresses[host])

    proxies = TrustedProxies(("edge",), resolve=resolve, clock=lambda: now[0])
    assert proxies.trusts("172.20.0.5") and not proxies.trusts("not an ip")
    assert len(calls) == 1
    assert proxies.trusts("172.20.0.5") and len(calls) == 1  # cached
    addresses["edge"] = {"172.20.0.9"}  # the edge was recreated
    now[0] += 2
    assert proxies.trusts("172.20.0.9")  # an unknown peer makes it look again
    assert not proxies.trusts("172.20.0.5")
    assert not proxies.trusts("172.20.0.7") and len(calls) == 2  # at most once a second


def test_forwarded_client_takes_the_last_entry():
    assert forwarded_client("1.2.3.4") == "1.2.3.4"
    assert forwarded_client("9.9.9.9, 1.2.3.4") == "1.2.3.4"
    assert forwarded_client("::1") == "::1"
    assert forwarded_client("evil\r\nx") is None


def test_wrong_keys_are_limited_per_client_and_a_right_key_from_elsewhere_still_works():
    settings = dict(api_keys=KEYS, auth_failure_limit=RateLimit(3, 60.0), trusted_proxies=("172.20.0.0/16",))
    edge = TestClient(tiny_app("172.20.0.5", **settings))
    attacker = {"X-Forwarded-For": "203.0.113.66", "X-API-Key": "guess-guess-guess"}
    codes = [edge.get("/v1/whoami", headers=attacker).status_code for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    refused = edge.get("/v1/whoami", headers={**attacker, "X-API-Key": "ops-secret-123"})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_failed_keys"
    assert int(refused.headers["Retry-After"]) >= 1
    # Another client behind the same edge has its own bucket: the limit is per real client.
    other = edge.get("/v1/whoami", headers={"X-Forwarded-For": "198.51.100.7", "X-API-Key": "ops-secret-123"})
    assert other.status_code == 200 and other.json()["client"] == "198.51.100.7"


def test_a_missing_key_is_not_counted_as_a_guess():
    edge = TestClient(tiny_app("127.0.0.1", api_keys=KEYS, auth_failure_limit=RateLimit(2, 60.0)))
    assert [edge.get("/v1/whoami").status_code for _ in range(4)] == [401] * 4
    assert edge.get("/v1/whoami", headers={"X-API-Key": "ops-secret-123"}).status_code == 200


def test_requests_without_forwarded_for_never_cost_a_name_lookup():
    calls = []
    app = FastAPI()

    @app.get("/ready")
    async def ready(request: Request):
        return {"client": request.client.host}

    from serving.security import ForwardedClient

    proxies = TrustedProxies(("edge",), resolve=lambda host: calls.append(host) or {"172.20.0.5"})
    inner = ForwardedClient(app, proxies)

    async def from_a_host_process(scope, receive, send):
        if scope["type"] == "http":
            scope["client"] = ("172.20.0.1", 40000)  # the bridge gateway: a slot port's caller
        await inner(scope, receive, send)

    client = TestClient(from_a_host_process)
    for _ in range(5):
        assert client.get("/ready").status_code == 200
    assert calls == []
    assert client.get("/ready", headers={"X-Forwarded-For": "203.0.113.9"}).json()["client"] == "172.20.0.1"
    assert calls == ["edge"]
