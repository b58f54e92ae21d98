"""A small token service for the registry's `auth.token` mode, as Docker's token spec describes it.

GET /token?service=S&scope=repository:NAME:pull,push with HTTP basic credentials answers
{"token": JWT, "access_token": JWT, "expires_in": 300}. The JWT is RS256-signed (openssl CLI)
by a key whose certificate is the registry's `rootcertbundle`; its header names the key by
libtrust key id (`kid`), the way the registry looks keys up. Known users get every action they
ask for; anyone else gets 401. Served over TLS with a certificate from the test CA.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

SERVICE = "aads-test-registry"
ISSUER = "aads-test-token-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(cert: Path) -> str:
    """The key id the registry computes for a certificate's public key (libtrust's format)."""
    pem = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"], check=True,
                         capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem, check=True,
                         capture_output=True).stdout
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


class TokenIssuer:
    """`with TokenIssuer(...) as issuer:` serves https://127.0.0.1:<port>/token until the block ends."""

    def __init__(self, signing_cert: Path, signing_key: Path, tls_cert: Path, tls_key: Path,
                 users: dict[str, str]):
        self.signing_key, self.users = signing_key, users
        self.kid = libtrust_key_id(signing_cert)
        self.issued: list[dict] = []  # the claims of every token handed out (tests read them)
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                url = urlparse(self.path)
                if url.path != "/token":
                    return self._send(404, {"error": "not found"})
                user = issuer._user(self.headers.get("Authorization", ""))
                if user is None:
                    return self._send(401, {"error": "unknown user or wrong password"})
                q = parse_qs(url.query)
                token = issuer.token(user, q.get("service", [SERVICE])[0], q.get("scope", []))
                self._send(200, {"token": token, "access_token": token, "expires_in": 300})

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}/token"

    def _user(self, header: str) -> str | None:
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if user in self.users and secrets.compare_digest(self.users[user], password) else None

    def token(self, user: str, service: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user, "aud": service, "exp": now + 300, "nbf": now - 30, "iat": now,
                  "jti": secrets.token_hex(8), "access": access}
        self.issued.append(claims)
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.signing_key)],
                                   input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def __enter__(self) -> "TokenIssuer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
