"""Debian's `docker-registry` (distribution 2.8) started the way production runs one: TLS with a
certificate from a test CA, and either htpasswd (basic) auth or token auth.

    with htpasswd_registry(workdir, {"alice": "secret"}) as reg:   reg.host == "127.0.0.1:PORT"
    with token_registry(workdir, {"bob": "secret"}) as reg:        reg.issuer is the TokenIssuer

`reg.trust_in_engine()` writes the CA to /etc/docker/certs.d/<host>/ca.crt (where both the engine
and the orchestrator read it) and returns whether it could; the file goes when the block ends.
Deletes stay disabled, as on the registry scripts/engine.sh starts.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from tests.registries.pki import TestCA, self_signed
from tests.registries.token_issuer import ISSUER, SERVICE, TokenIssuer

CERTS_D = Path("/etc/docker/certs.d")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def htpasswd_line(user: str, password: str) -> str:
    """`htpasswd -Bbn` (apache2-utils): the bcrypt entry the registry's htpasswd auth reads."""
    return subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()


@dataclass
class RunningRegistry:
    host: str
    ca: TestCA
    users: dict[str, str]
    workdir: Path
    issuer: TokenIssuer | None = None
    _trusted: list[Path] = field(default_factory=list)

    def trust_in_engine(self) -> bool:
        target = CERTS_D / self.host
        try:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.ca.cert, target / "ca.crt")
        except OSError:
            return False
        self._trusted.append(target)
        return True

    def untrust(self) -> None:
        while self._trusted:
            shutil.rmtree(self._trusted.pop(), ignore_errors=True)


def _wait_until_up(host: str, ca: TestCA, process: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    context = ssl.create_default_context(cafile=str(ca.cert))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited {process.returncode}: {log.read_text()[-800:]}")
        try:
            urllib.request.urlopen(f"https://{host}/v2/", timeout=2, context=context)
            return
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"docker-registry on {host} did not answer within {seconds}s: {log.read_text()[-800:]}")


@contextmanager
def _registry(workdir: Path, users: dict[str, str], auth: dict, ca: TestCA,
              issuer: TokenIssuer | None = None) -> Iterator[RunningRegistry]:
    port = _free_port()
    host = f"127.0.0.1:{port}"
    cert, key = ca.issue("registry")
    config = {
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": False}},
        "http": {"addr": host, "tls": {"certificate": str(cert), "key": str(key)}},
        "auth": auth,
    }
    (workdir / "config.yml").write_text(yaml.safe_dump(config))
    log = workdir / "registry.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["docker-registry", "serve", str(workdir / "config.yml")], stdout=out,
                                   stderr=subprocess.STDOUT)
    reg = RunningRegistry(host=host, ca=ca, users=users, workdir=workdir, issuer=issuer)
    try:
        _wait_until_up(host, ca, process, log)
        yield reg
    finally:
        reg.untrust()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def htpasswd_registry(workdir: Path, users: dict[str, str]) -> Iterator[RunningRegistry]:
    """A TLS registry with basic auth from an htpasswd file made by `htpasswd -Bbn`."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = TestCA.create(workdir / "pki")
    (workdir / "htpasswd").write_text("".join(htpasswd_line(u, p) + "\n" for u, p in users.items()))
    auth = {"htpasswd": {"realm": "aads-test", "path": str(workdir / "htpasswd")}}
    with _registry(workdir, users, auth, ca) as reg:
        yield reg


@contextmanager
def token_registry(workdir: Path, users: dict[str, str]) -> Iterator[RunningRegistry]:
    """A TLS registry with token auth; tokens come from a TokenIssuer (over TLS from the same CA)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = TestCA.create(workdir / "pki")
    signing_cert, signing_key = self_signed(workdir / "pki", "token-signer")
    tls_cert, tls_key = ca.issue("token-issuer")
    with TokenIssuer(signing_cert, signing_key, tls_cert, tls_key, users) as issuer:
        auth = {"token": {"realm": issuer.realm, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(signing_cert)}}
        with _registry(workdir, users, auth, ca, issuer=issuer) as reg:
            yield reg
