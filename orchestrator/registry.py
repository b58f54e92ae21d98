"""A small client for the registry HTTP API v2: what digest does a tag resolve to?

The orchestrator asks the registry itself (not the local engine) so that a tag moved by someone
else is seen before a switch, and so that a machine without an engine (a Kubernetes operator's
laptop) can check it too. It speaks to registries as they run in production:

  TLS        verified against the system store, REQUESTS_CA_BUNDLE, `ca_file` and Docker's
             certs.d (orchestrator.registry_tls); plain HTTP only for loopback or `insecure: true`
  auth       `WWW-Authenticate: Basic` (credentials on the retry) and `Bearer realm,service,scope`
             (a token fetched from the realm with the credentials, or anonymously, then the retry)
  secrets    orchestrator.registry_auth finds them (env for CI, a 0600 file, the Docker config)

Errors say which problem it was and how to fix it: no credentials, refused credentials, an
untrusted certificate, a server that does not speak TLS.

Why not a registry library: the maintained parts are used where they fit (the docker SDK's
`docker.auth` resolves the Docker config and credential helpers; httpx's `Auth` hook carries the
challenge flow). The Python registry clients (python-dxf, oras) take one CA file or a bool for
TLS and credentials through a callback, so certs.d, the loopback rule and the error lines would
still be ours; the three calls the orchestrator needs (ping, HEAD a manifest, list tags) are not
worth a dependency on top of that.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Generator, Mapping

import httpx

from orchestrator.errors import RegistryAuthError, RegistryError, RegistryTLSError
from orchestrator.registry_auth import Credentials, CredentialSources
from orchestrator.registry_tls import (TrustSettings, certificate_problem, is_loopback, ssl_context_for,
                                       ssl_context_without_cas, tls_problem)

MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])


def split_repository(repository: str) -> tuple[str, str]:
    """'127.0.0.1:5000/aads-ulora' -> ('127.0.0.1:5000', 'aads-ulora')."""
    host, _, name = repository.partition("/")
    if not name:
        raise RegistryError(f"registry repository {repository!r} must look like HOST[:PORT]/NAME")
    return host, name


@dataclass(frozen=True)
class Challenge:
    """A parsed `WWW-Authenticate` header: scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """'Bearer realm="https://a/token",service="reg",scope="repository:x:pull"' -> Challenge."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)\s*=\s*"([^"]*)"', rest)}
    return Challenge(scheme=scheme.lower(), params=params)


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class ChallengeAuth(httpx.Auth):
    """Answers the registry's 401: Basic with the credentials, or a Bearer token from the realm."""

    requires_response_body = True

    def __init__(self, host: str, credentials: Credentials | None, where: str):
        self.host, self.credentials, self.where = host, credentials, where
        self.challenge: Challenge | None = None
        self._basic = False
        self._token: str | None = None

    def _apply(self, request: httpx.Request) -> None:
        creds = self.credentials
        if self._basic and creds and creds.username is not None:
            request.headers["Authorization"] = basic_header(creds.username, creds.password or "")
        elif self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._apply(request)
        response = yield request
        if response.status_code != 401:
            return
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        self.challenge = challenge
        if challenge is None:
            return
        if challenge.scheme == "basic":
            if self._basic or not self.credentials or self.credentials.username is None:
                return  # refused (or nothing to send): the caller names the problem
            self._basic = True
        elif challenge.scheme == "bearer":
            token_response = yield self._token_request(challenge)
            self._token = self._read_token(token_response, challenge)
        else:
            return
        self._apply(request)
        yield request

    def _token_request(self, challenge: Challenge) -> httpx.Request:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryAuthError(f"registry {self.host} asks for a Bearer token but names no realm")
        query = {k: challenge.params[k] for k in ("service", "scope") if k in challenge.params}
        creds = self.credentials
        if creds and creds.identity_token:  # Docker's refresh token: the OAuth2 form of the token flow
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": "aads-orchestrator", **query}
            return httpx.Request("POST", realm, data=form)
        if creds and creds.username is not None:
            return httpx.Request("GET", realm, params={**query, "account": creds.username},
                                 headers={"Authorization": basic_header(creds.username, creds.password or "")})
        return httpx.Request("GET", realm, params=query)  # anonymous: public registries give pull tokens

    def _read_token(self, response: httpx.Response, challenge: Challenge) -> str:
        realm = challenge.params.get("realm")
        if response.status_code in (401, 403):
            if self.credentials:
                raise RegistryAuthError(
                    f"the token service {realm} of registry {self.host} refused the credentials "
                    f"({self.credentials.who()}): wrong user name or password; log in again with "
                    f"`docker login {self.host}` or fix the source named")
            raise RegistryAuthError(_needs_credentials(self.host, "Bearer", self.where))
        if response.status_code != 200:
            raise RegistryError(f"the token service {realm} of registry {self.host} answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise RegistryError(f"the token service {realm} of registry {self.host} gave no JSON") from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"the token service {realm} of registry {self.host} gave no token")
        return token


def _needs_credentials(host: str, scheme: str, where: str) -> str:
    return (f"registry {host} asks for credentials ({scheme} auth) and none were found (looked in: {where}): "
            f"`docker login {host}`, or set AADS_REGISTRY_USERNAME and AADS_REGISTRY_PASSWORD")


class RegistryClient:
    """Tag and digest questions to one repository, over TLS with the registry's auth."""

    def __init__(self, repository: str, timeout: float = 10.0, *, config=None,
                 credentials: Credentials | None = None, insecure: bool = False, ca_file: str | None = None,
                 env: Mapping[str, str] | None = None):
        """Args:
            repository: HOST[:PORT]/NAME.
            config: the orchestrator Config: its `registries.<host>` settings and credential
                sources are used (explicit `credentials`/`insecure`/`ca_file` win). Without
                it: env credentials, the engine's credentials file, the Docker config.
            env: the environment to read (default os.environ).
        """
        self.repository = repository
        self.host, self.name = split_repository(repository)
        if config is not None:
            settings = config.registry_settings(self.host)
            insecure = insecure or settings.insecure
            ca_file = ca_file or (str(config.path(settings.ca_file)) if settings.ca_file else None)
            sources = CredentialSources.from_config(config, env)
        else:
            sources = CredentialSources.for_host(self.host, env)
        credentials = credentials or sources.find(self.host)
        where = sources.describe(self.host) if credentials is None else credentials.source
        self.credentials = credentials
        self.plain_http_allowed = insecure or is_loopback(self.host)
        self._trust_args = {"ca_file": ca_file, "env": env}
        self._timeout = timeout
        self._auth = ChallengeAuth(self.host, credentials, where)
        self._trust: TrustSettings | None = None
        # Loading the trust store costs 0.1-0.15 s per process (a tenth of a warm rollback). A registry
        # that may speak plain HTTP is first asked through a context that trusts no CA yet: a plain
        # server fails the handshake before any certificate is read, and a TLS one is asked again
        # with the full trust (`_first_request`). Certificates are always verified.
        if self.plain_http_allowed:
            self._http = self._client(ssl_context_without_cas())
        else:
            self._http = self._client(self.trust.context)
        self._scheme: str | None = None  # https, or http once a loopback/insecure registry proved plain

    @property
    def trust(self) -> TrustSettings:
        """The certificates this client trusts for the host (built on first need)."""
        if self._trust is None:
            self._trust = ssl_context_for(self.host, **self._trust_args)
        return self._trust

    def _client(self, context) -> httpx.Client:
        return httpx.Client(verify=context, timeout=self._timeout, auth=self._auth)

    @property
    def scheme(self) -> str | None:
        """'https' or 'http' once the first request told which (None before)."""
        return self._scheme

    def _send(self, scheme: str, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
        return self._http.request(method, f"{scheme}://{self.host}/v2/{path}", headers=headers)

    def _request(self, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        headers = headers or {}
        try:
            if self._scheme:
                r = self._send(self._scheme, method, path, headers)
            else:
                r = self._first_request(method, path, headers)
        except httpx.HTTPError as e:
            raise RegistryError(f"registry {self.host} is unreachable ({type(e).__name__}: {str(e)[:120]})") from None
        return self._check_auth(r)

    def _first_request(self, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
        try:
            r = self._send("https", method, path, headers)
        except httpx.ConnectError as e:
            if self._trust is None and certificate_problem(e) is not None:
                # A TLS registry asked without CAs (see __init__): ask again with the full trust.
                self._http.close()
                self._http = self._client(self.trust.context)
                return self._first_request(method, path, headers)
            bad_cert = certificate_problem(e)
            if bad_cert is not None:
                raise RegistryTLSError(
                    f"the certificate of registry {self.host} is not trusted ({bad_cert.verify_message}): put the CA "
                    f"that signed it in /etc/docker/certs.d/{self.host}/ca.crt (the engine reads it there too) or "
                    f"in a bundle named by SSL_CERT_FILE or REQUESTS_CA_BUNDLE") from None
            if tls_problem(e) is None:
                raise
            if not self.plain_http_allowed:
                raise RegistryTLSError(
                    f"registry {self.host} does not answer in TLS ({str(e)[:80]}): if it is meant to speak plain "
                    f"HTTP, mark it `insecure: true` under `registries: {{{self.host}: ...}}` in orchestrator.yaml"
                ) from None
            r = self._send("http", method, path, headers)
            self._scheme = "http"
            return r
        self._scheme = "https"
        return r

    def _check_auth(self, r: httpx.Response) -> httpx.Response:
        if r.status_code == 401:
            scheme = (self._auth.challenge.scheme.capitalize() if self._auth.challenge else "unknown")
            if self.credentials is None:
                raise RegistryAuthError(_needs_credentials(self.host, scheme, self._auth.where))
            raise RegistryAuthError(
                f"registry {self.host} refused the credentials ({self.credentials.who()}): wrong user name or "
                f"password; log in again with `docker login {self.host}` or fix the source named")
        if r.status_code == 403:
            who = self.credentials.who() if self.credentials else "anonymous"
            raise RegistryAuthError(f"registry {self.host} denies {who} access to {self.name} (403): "
                                    f"the account needs pull (and push) rights on it")
        return r

    def ping(self) -> None:
        """Reach /v2/ (authenticating when asked): proves the address, TLS trust and credentials."""
        r = self._request("GET", "")
        if r.status_code != 200:
            raise RegistryError(f"registry {self.host} answered {r.status_code} to /v2/")

    def tag_digest(self, tag: str) -> str | None:
        """The manifest digest the tag resolves to now, or None if the tag does not exist."""
        r = self._request("HEAD", f"{self.name}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES})
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise RegistryError(f"registry {self.host} answered {r.status_code} for {self.name}:{tag}")
        digest = r.headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryError(f"registry {self.host} gave no digest for {self.name}:{tag}")
        return digest

    def tags(self) -> list[str]:
        r = self._request("GET", f"{self.name}/tags/list")
        if r.status_code == 404:
            return []
        if r.status_code != 200:
            raise RegistryError(f"registry {self.host} answered {r.status_code} listing tags of {self.name}")
        return sorted(r.json().get("tags") or [])

    def close(self) -> None:
        self._http.close()


def engine_auth_config(config, repository: str) -> dict[str, str] | None:
    """The docker SDK `auth_config` for pushing/pulling `repository` (None: the engine's own)."""
    host, _ = split_repository(repository)
    found = CredentialSources.from_config(config).find(host)
    return found.auth_config() if found else None
