"""A throw-away certificate authority made with the openssl CLI (no Python crypto dependency).

    ca = TestCA.create(dir)            ca.cert (PEM), ca.key
    ca.issue("server", ip="127.0.0.1") -> (cert path, key path), signed by the CA, SAN IP:127.0.0.1
    self_signed(dir, "signer")         -> (cert, key): the token issuer's signing key pair
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class TestCA:
    dir: Path
    cert: Path
    key: Path

    __test__ = False  # not a pytest class

    @classmethod
    def create(cls, directory: Path, name: str = "aads-test-ca") -> "TestCA":
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                 "-keyout", str(key), "-out", str(cert), "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
        return cls(directory, cert, key)

    def issue(self, name: str, ip: str = "127.0.0.1") -> tuple[Path, Path]:
        """A server certificate for `ip` signed by this CA."""
        key, csr, cert = self.dir / f"{name}.key", self.dir / f"{name}.csr", self.dir / f"{name}.crt"
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={ip}", "-keyout", str(key), "-out", str(csr),
                 cwd=self.dir)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key), "-CAcreateserial",
                 "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=self.dir)
        return cert, key


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed RSA certificate and key (the token issuer's signing pair)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert), cwd=directory)
    return cert, key
