"""Registry credentials: found where operators already keep them, used the same way everywhere.

Search order for a registry host (the first that has an entry wins):

  1. AADS_REGISTRY_USERNAME + AADS_REGISTRY_PASSWORD   CI; only for the configured registry's host
                                                        (orchestrator.yaml `registry` / $AADS_REGISTRY)
  2. a credentials file                                 `registries.<host>.credentials_file`,
                                                        $AADS_REGISTRY_CREDENTIALS_FILE, or the one
                                                        `scripts/engine.sh` writes (DEFAULT_CREDENTIALS_FILE);
                                                        used only when its "registry" names the host
  3. the Docker config                                  `auths`, `credsStore`, `credHelpers` of
                                                        $DOCKER_CONFIG/config.json or ~/.docker/config.json,
                                                        resolved by the docker SDK (helpers included)

The same `Credentials` feed the registry HTTP client (basic auth or the token flow) and the
engine's pushes and pulls (`auth_config`), so the orchestrator and the engine never disagree.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from docker import auth as docker_auth
from docker.errors import DockerException

from orchestrator.errors import RegistryError

DEFAULT_CREDENTIALS_FILE = Path("/var/lib/aads-engine/registry/credentials.json")
ENV_USERNAME = "AADS_REGISTRY_USERNAME"
ENV_PASSWORD = "AADS_REGISTRY_PASSWORD"
ENV_CREDENTIALS_FILE = "AADS_REGISTRY_CREDENTIALS_FILE"


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or a Docker identity token) and where they came from."""

    source: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def auth_config(self) -> dict[str, str]:
        """The docker SDK's `auth_config` for pushes and pulls through the engine."""
        if self.identity_token:
            return {"identitytoken": self.identity_token}
        return {"username": self.username or "", "password": self.password or ""}

    def who(self) -> str:
        """`user aads from <source>` for error lines (never the secret)."""
        return f"user {self.username!r} from {self.source}" if self.username else f"identity token from {self.source}"


@dataclass(frozen=True)
class CredentialSources:
    """Where to look for credentials; `find(host)` looks, `describe(host)` says where it looked."""

    primary_host: str | None = None
    credentials_files: tuple[Path, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)

    @classmethod
    def from_config(cls, config, env: Mapping[str, str] | None = None) -> "CredentialSources":
        """The sources for `config` (an orchestrator Config): its registry host gets the env pair."""
        env = os.environ if env is None else env
        files: list[Path] = []
        for settings in config.registries.values():
            if settings.credentials_file:
                files.append(config.path(settings.credentials_file))
        if env.get(ENV_CREDENTIALS_FILE):
            files.append(Path(env[ENV_CREDENTIALS_FILE]).expanduser())
        files.append(DEFAULT_CREDENTIALS_FILE)
        return cls(primary_host=config.registry_host, credentials_files=tuple(dict.fromkeys(files)), env=env)

    @classmethod
    def for_host(cls, host: str, env: Mapping[str, str] | None = None) -> "CredentialSources":
        """The sources without a config file: the env pair goes to the host of $AADS_REGISTRY when
        set (CI names its registry there), else to `host`; then the default file, the Docker config."""
        env = os.environ if env is None else env
        files = [Path(env[ENV_CREDENTIALS_FILE]).expanduser()] if env.get(ENV_CREDENTIALS_FILE) else []
        primary = env["AADS_REGISTRY"].split("/", 1)[0] if env.get("AADS_REGISTRY") else host
        return cls(primary_host=primary, credentials_files=(*files, DEFAULT_CREDENTIALS_FILE), env=env)

    def find(self, host: str) -> Credentials | None:
        """The credentials for registry `host`, or None when no source has any.

        Raises:
            RegistryError: a credentials file is readable by others or malformed, or a Docker
                credential helper failed.
        """
        if host == self.primary_host and self.env.get(ENV_USERNAME):
            return Credentials(source=f"${ENV_USERNAME}/${ENV_PASSWORD}", username=self.env[ENV_USERNAME],
                               password=self.env.get(ENV_PASSWORD, ""))
        for path in self.credentials_files:
            found = read_credentials_file(path, host)
            if found:
                return found
        return docker_config_credentials(host, self.env)

    def describe(self, host: str) -> str:
        places = [f"${ENV_USERNAME}"] if host == self.primary_host else []
        places += [str(p) for p in self.credentials_files]
        places.append(f"the Docker config ({_docker_config_path(self.env)})")
        return ", ".join(places)


def read_credentials_file(path: Path, host: str) -> Credentials | None:
    """The credentials in `path` when it exists, is private (0600) and is for `host`."""
    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RegistryError(f"credentials file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                            f"`chmod 600 {path}`")
    try:
        data = json.loads(path.read_text())
    except PermissionError:
        return None  # another user's file (e.g. root's engine set-up): not ours to use
    except (OSError, ValueError) as e:
        raise RegistryError(f"credentials file {path} is not readable JSON ({type(e).__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("registry", "username", "password")):
        raise RegistryError(f"credentials file {path} must hold {{\"registry\", \"username\", \"password\"}} strings")
    if data["registry"] != host:
        return None
    return Credentials(source=str(path), username=data["username"], password=data["password"])


def _docker_config_path(env: Mapping[str, str]) -> str:
    if env.get("DOCKER_CONFIG"):
        return str(Path(env["DOCKER_CONFIG"]) / "config.json")
    return str(Path.home() / ".docker" / "config.json")


def docker_config_credentials(host: str, env: Mapping[str, str]) -> Credentials | None:
    """The Docker config's entry for `host` (`auths`, `credsStore`, `credHelpers`), via the docker SDK."""
    path = _docker_config_path(env)
    if not os.path.isfile(path):
        return None
    config = docker_auth.load_config(config_path=path, credstore_env=dict(env))
    try:
        entry = config.resolve_authconfig(host)
    except DockerException as e:
        helper = config.get_credential_store(host)
        raise RegistryError(f"the Docker credential helper ({helper}) for {host} failed: {str(e)[:200]}") from None
    if not entry:
        return None
    # Helper answers use Docker's JSON keys (Username, Password); `auths` entries are lower-case.
    from_store = "Username" in entry or "ServerAddress" in entry
    store = config.get_credential_store(host) if from_store else None
    source = f"docker-credential-{store} (Docker config)" if store else f"{path} (auths)"
    if entry.get("IdentityToken"):
        return Credentials(source=source, identity_token=entry["IdentityToken"])
    username = entry.get("Username", entry.get("username"))
    if not username:
        return None
    return Credentials(source=source, username=username, password=entry.get("Password", entry.get("password")) or "")
