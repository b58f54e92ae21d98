"""A small client for the registry HTTP API v2: what digest does a tag resolve to?

The orchestrator asks the registry itself (not the local engine) so that a tag moved by someone
else is seen before a switch.
"""

from __future__ import annotations

import requests

from orchestrator.errors import RegistryError

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


class RegistryClient:
    def __init__(self, repository: str, timeout: float = 10.0, scheme: str = "http"):
        self.repository = repository
        self.host, self.name = split_repository(repository)
        self.base = f"{scheme}://{self.host}/v2"
        self.timeout = timeout

    def _request(self, method: str, path: str, **kw) -> requests.Response:
        url = f"{self.base}/{path}"
        try:
            return requests.request(method, url, timeout=self.timeout, **kw)
        except requests.RequestException as e:
            raise RegistryError(f"registry {self.host} is unreachable ({type(e).__name__})") from None

    def ping(self) -> None:
        r = self._request("GET", "")
        if r.status_code not in (200, 401):
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
