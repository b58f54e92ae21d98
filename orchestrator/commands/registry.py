"""`orchestrator registry check`: can this machine reach the registry, trust it, and log in?"""

from __future__ import annotations

import click

from orchestrator.context import Context
from orchestrator.options import json_option

CHECK_HELP = """Reach the registry the way push, verify and switch do, and say how.

\b
Connects to REPOSITORY (default: the configured `registry`), verifies its certificate
(system store, REQUESTS_CA_BUNDLE / SSL_CERT_FILE, `registries.<host>.ca_file`,
/etc/docker/certs.d/<host>/ca.crt) and authenticates (basic or token) with the credentials
found first in: AADS_REGISTRY_USERNAME/AADS_REGISTRY_PASSWORD, a 0600 credentials file, the
Docker config (`docker login`, credential helpers). Exit 0 when /v2/ answers 200; otherwise one
line saying what failed (no credentials, refused credentials, untrusted certificate) and the fix.
"""


def register(cli: click.Group) -> None:
    @cli.group("registry")
    def registry_group() -> None:
        """The image registry: check access (TLS, credentials)."""

    @registry_group.command("check", help=CHECK_HELP)
    @click.argument("repository", required=False)
    @json_option
    @click.pass_obj
    def check_cmd(ctx: Context, repository: str | None, as_json: bool) -> None:
        from orchestrator.registry import RegistryClient

        client = RegistryClient(repository or ctx.config.registry, config=ctx.config)
        try:
            client.ping()
            result = {"repository": client.repository, "scheme": client.scheme,
                      "credentials": client.credentials.source if client.credentials else None,
                      "user": client.credentials.username if client.credentials else None,
                      "trust": list(client.trust.sources) if client.scheme == "https" else []}
        finally:
            client.close()
        if as_json:
            ctx.emit_json(result)
            return
        who = f"user {result['user']!r} from {result['credentials']}" if result["credentials"] else "no credentials"
        over = "TLS (" + ", ".join(result["trust"]) + ")" if result["trust"] else "plain HTTP (loopback or insecure)"
        ctx.stdout.print(f"registry {client.host}: ok over {over}; {who}", markup=False)
