"""Which certificates the orchestrator trusts for a registry, the way the Docker engine does.

One SSL context per registry host holds, in this order:

  - the system store (OpenSSL's default paths; SSL_CERT_FILE / SSL_CERT_DIR change them)
  - the bundle named by REQUESTS_CA_BUNDLE (the variable Python tools already honour)
  - `registries.<host>.ca_file` from orchestrator.yaml
  - Docker's per-registry directory `certs.d/<host>/`: every `*.crt` is a CA, a `*.cert` with its
    `*.key` is a client certificate (mutual TLS), exactly as the engine reads it

Plain HTTP is never chosen silently: only a loopback registry or one marked `insecure: true`
may fall back to it, and only after it turned out not to speak TLS at all.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from orchestrator.errors import RegistryError

# Where the engine looks (rootful first, then rootless), so one ca.crt serves both.
CERTS_D_DIRS = (Path("/etc/docker/certs.d"), Path("~/.config/docker/certs.d").expanduser())


@dataclass(frozen=True)
class TrustSettings:
    """The trust the SSL context for one host was built from (for error lines)."""

    context: ssl.SSLContext
    sources: tuple[str, ...]


def is_loopback(host: str) -> bool:
    """'127.0.0.1:5000', 'localhost', '[::1]:5000' -> True."""
    if host.startswith("["):
        name = host[1:host.find("]")]
    elif host.count(":") == 1:
        name = host.split(":")[0]
    else:
        name = host  # a bare name, or an IPv6 address without a port
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def ssl_context_for(host: str, *, ca_file: str | Path | None = None, env: Mapping[str, str] | None = None,
                    certs_d_dirs: tuple[Path, ...] = CERTS_D_DIRS) -> TrustSettings:
    """The SSL context that verifies registry `host` (see the module docstring for the sources).

    Raises:
        RegistryError: a configured CA file or client key pair cannot be loaded.
    """
    env = os.environ if env is None else env
    context = ssl.create_default_context()
    sources = ["system store" + (f" (SSL_CERT_FILE={env['SSL_CERT_FILE']})" if env.get("SSL_CERT_FILE") else "")]
    extra = [Path(env["REQUESTS_CA_BUNDLE"])] if env.get("REQUESTS_CA_BUNDLE") else []
    if ca_file:
        extra.append(Path(ca_file))
    for d in certs_d_dirs:
        hostdir = d / host
        if hostdir.is_dir():
            extra += sorted(hostdir.glob("*.crt"))
            for cert in sorted(hostdir.glob("*.cert")):
                key = cert.with_suffix(".key")
                try:
                    context.load_cert_chain(cert, key)
                except (OSError, ssl.SSLError) as e:
                    raise RegistryError(f"client certificate {cert} (key {key}) cannot be loaded: {e}") from None
    for path in extra:
        try:
            context.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as e:
            raise RegistryError(f"CA file {path} for registry {host} cannot be loaded: {e}") from None
        sources.append(str(path))
    return TrustSettings(context=context, sources=tuple(sources))


def ssl_context_without_cas() -> ssl.SSLContext:
    """A verifying client context that trusts no CA: enough to learn that a server speaks no TLS,
    and it refuses every certificate (the caller then builds `ssl_context_for`)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname on, CERT_REQUIRED


def _in_chain(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in `exc`'s cause/context chain (cycles stop the walk)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def certificate_problem(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure somewhere in `exc`'s chain, if that is what it was."""
    return _in_chain(exc, ssl.SSLCertVerificationError)


def tls_problem(exc: BaseException) -> ssl.SSLError | None:
    """Any TLS failure in `exc`'s chain (e.g. a server that answers in plain HTTP)."""
    return _in_chain(exc, ssl.SSLError)
