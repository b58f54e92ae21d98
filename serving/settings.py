"""Runtime settings of the service, read once from the environment and validated.

Every setting is an `AADS_*` variable (see docs/api.md). A bad value stops start-up with a
`SettingsError` naming the variable, the value and what was expected; nothing re-reads the
environment later: `Settings` is passed down.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aads_manifest.api_keys import ApiKey, ApiKeysError
from aads_manifest.api_keys import parse_api_keys as _shared_parse_api_keys

MB = 1024 * 1024


class SettingsError(ValueError):
    """A setting with a bad value; the message names the variable."""


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` per `per_seconds`, per API key (or per client address without keys)."""

    requests: int
    per_seconds: float

    def __str__(self) -> str:
        return f"{self.requests}/{self.per_seconds:g}s"


@dataclass(frozen=True)
class Settings:
    model_dir: Path = Path("/models")
    manifest_dir: Path = Path("/app/version")
    host: str = "0.0.0.0"
    port: int = 8000
    device: str | None = None  # None: the pipeline picks (CUDA when visible)
    # None: the manifest's backbone.dtype; "auto" = bf16 where the hardware has it (serving.precision).
    precision: str | None = None
    # Response cache (serving.response_cache): 0 entries turns it off.
    cache_entries: int = 1024
    cache_bytes: int = 16 * MB
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    queue_size: int = 256
    max_upload_bytes: int = 10 * MB
    # A 16 MP phone photo (4608 x 3456) passes; a decoded RGBA buffer is at most 4 bytes per pixel.
    max_pixels: int = 16_000_000
    max_batch_items: int = 32
    max_batch_body_bytes: int = 64 * MB
    # How many uploads decode at once: each holds up to ~8 bytes x max_pixels while it runs.
    decode_concurrency: int = 2
    # Open connections + requests uvicorn takes before answering 503 (its limit_concurrency).
    max_connections: int = 64
    # A request body must arrive within this long once its headers did (a trickled body is cut).
    body_timeout_s: float = 30.0
    api_keys: tuple[ApiKey, ...] = ()
    rate_limit: RateLimit | None = None
    # Failed key attempts per client address before 429 (None: unlimited).
    auth_failure_limit: RateLimit | None = RateLimit(10, 60.0)
    # Peers whose X-Forwarded-For names the real client: IPs, CIDRs or host names (the edge).
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    graceful_timeout_s: float = 30.0
    log_level: str = "info"
    build_labels: dict[str, str] = field(default_factory=dict)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from `env` (default: os.environ).

        Raises:
            SettingsError: a variable has a value that cannot be used; the message names it.
        """
        env = os.environ if env is None else env
        reader = _Reader(env)
        settings = cls(
            model_dir=reader.path("AADS_MODEL_DIR", cls.model_dir),
            manifest_dir=reader.path("AADS_MANIFEST_DIR", cls.manifest_dir),
            host=reader.text("AADS_HOST", cls.host),
            port=reader.integer("AADS_PORT", cls.port, low=1, high=65535),
            device=reader.text("AADS_DEVICE", "") or None,
            precision=_read_precision(reader),
            cache_entries=reader.integer("AADS_CACHE_ENTRIES", cls.cache_entries, low=0, high=10_000_000),
            cache_bytes=reader.size("AADS_CACHE_BYTES", cls.cache_bytes),
            max_batch_size=reader.integer("AADS_MAX_BATCH_SIZE", cls.max_batch_size, low=1, high=1024),
            max_wait_ms=reader.number("AADS_MAX_WAIT_MS", cls.max_wait_ms, low=0, high=10_000),
            queue_size=reader.integer("AADS_QUEUE_SIZE", cls.queue_size, low=1, high=1_000_000),
            max_upload_bytes=reader.size("AADS_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            max_pixels=reader.integer("AADS_MAX_PIXELS", cls.max_pixels, low=1, high=2**40),
            max_batch_items=reader.integer("AADS_MAX_BATCH_ITEMS", cls.max_batch_items, low=1, high=10_000),
            max_batch_body_bytes=reader.size("AADS_MAX_BATCH_BODY_BYTES", cls.max_batch_body_bytes),
            decode_concurrency=reader.integer("AADS_DECODE_CONCURRENCY", cls.decode_concurrency, low=1, high=256),
            max_connections=reader.integer("AADS_MAX_CONNECTIONS", cls.max_connections, low=1, high=100_000),
            body_timeout_s=reader.number("AADS_BODY_TIMEOUT_S", cls.body_timeout_s, low=0.1, high=3600),
            api_keys=_read_api_keys(env),
            rate_limit=reader.rate("AADS_RATE_LIMIT"),
            auth_failure_limit=reader.rate("AADS_AUTH_FAILURE_LIMIT", cls.auth_failure_limit),
            trusted_proxies=reader.proxies("AADS_TRUSTED_PROXIES"),
            cors_origins=reader.origins("AADS_CORS_ORIGINS"),
            graceful_timeout_s=reader.number("AADS_GRACEFUL_TIMEOUT_S", cls.graceful_timeout_s, low=0, high=3600),
            log_level=reader.choice("AADS_LOG_LEVEL", cls.log_level, ("critical", "error", "warning", "info", "debug")),
            build_labels=_read_build_labels(env),
        )
        if settings.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", settings.device):
            raise SettingsError(f"AADS_DEVICE={settings.device!r}: expected cpu, cuda or cuda:N")
        return settings


class _Reader:
    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        value = self._raw(name)
        return default if value is None else value

    def path(self, name: str, default: Path) -> Path:
        value = self._raw(name)
        return default if value is None else Path(value)

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = int(value.replace("_", ""))
        except ValueError:
            raise SettingsError(f"{name}={value!r}: expected a whole number from {low} to {high}") from None
        if not low <= number <= high:
            raise SettingsError(f"{name}={value!r}: expected a whole number from {low} to {high}")
        return number

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r}: expected a number from {low:g} to {high:g}") from None
        if not low <= number <= high:
            raise SettingsError(f"{name}={value!r}: expected a number from {low:g} to {high:g}")
        return number

    def size(self, name: str, default: int) -> int:
        """Bytes, as a number or with a unit: 10485760, 10MB, 512KB (1 KB = 1024 bytes)."""
        value = self._raw(name)
        if value is None:
            return default
        m = re.fullmatch(r"(\d+)\s*([kKmMgG]i?[bB]?|[bB])?", value)
        if not m:
            raise SettingsError(f"{name}={value!r}: expected a size in bytes such as 10485760 or 10MB")
        unit = (m.group(2) or "b")[0].lower()
        number = int(m.group(1)) * {"b": 1, "k": 1024, "m": MB, "g": 1024 * MB}[unit]
        if not 1 <= number <= 1024 * MB:
            raise SettingsError(f"{name}={value!r}: expected a size from 1 byte to 1GB")
        return number

    def rate(self, name: str, default: RateLimit | None = None) -> RateLimit | None:
        """`N/second`, `N/minute`, `N/hour` (or `N/s`, `N/m`, `N/h`, `N/30s`); `off` = none; empty = `default`."""
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() in ("off", "none", "0"):
            return None
        m = re.fullmatch(r"(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour)s?", value.lower())
        if not m or int(m.group(1)) < 1:
            raise SettingsError(f"{name}={value!r}: expected requests per period such as 60/minute, 10/s or 100/h")
        unit = {"s": 1, "m": 60, "h": 3600}[m.group(3)[0]]
        return RateLimit(requests=int(m.group(1)), per_seconds=float(int(m.group(2) or 1) * unit))

    def origins(self, name: str) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return ()
        origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise SettingsError(f"{name}: origin {origin!r} must look like https://host[:port]")
        return origins

    def proxies(self, name: str) -> tuple[str, ...]:
        """Comma-separated IPs, CIDRs (10.0.0.0/8) or host names (edge)."""
        value = self._raw(name)
        if value is None:
            return ()
        entries = tuple(e.strip() for e in value.split(",") if e.strip())
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", entry):
                    raise SettingsError(f"{name}: {entry!r} is not an IP address, a CIDR or a host name") from None
        return entries

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() not in choices:
            raise SettingsError(f"{name}={value!r}: expected one of {', '.join(choices)}")
        return value.lower()


def parse_api_keys(text: str, source: str) -> tuple[ApiKey, ...]:
    """`aads_manifest.api_keys.parse_api_keys` (the format the orchestrator writes too), raising SettingsError."""
    try:
        return _shared_parse_api_keys(text, source)
    except ApiKeysError as e:
        raise SettingsError(str(e)) from None


def _read_api_keys(env: Mapping[str, str]) -> tuple[ApiKey, ...]:
    keys = parse_api_keys(env.get("AADS_API_KEYS", ""), "AADS_API_KEYS")
    file_name = env.get("AADS_API_KEYS_FILE", "").strip()
    if file_name:
        try:
            text = Path(file_name).read_text()
        except OSError as e:
            raise SettingsError(f"AADS_API_KEYS_FILE={file_name!r}: cannot be read ({e.strerror or e})") from None
        from_file = parse_api_keys(text, f"AADS_API_KEYS_FILE ({file_name})")
        if not from_file:
            raise SettingsError(f"AADS_API_KEYS_FILE={file_name!r}: the file holds no key")
        clash = {k.key_id for k in keys} & {k.key_id for k in from_file}
        if clash:
            raise SettingsError(f"key id(s) {sorted(clash)} appear in both AADS_API_KEYS and AADS_API_KEYS_FILE")
        keys += from_file
    return keys


def _read_precision(reader: "_Reader") -> str | None:
    """AADS_PRECISION: auto, fp32 or bf16 (also float32, bfloat16), as the manifest's dtype names."""
    value = reader.choice("AADS_PRECISION", "", ("auto", "fp32", "float32", "bf16", "bfloat16"))
    return {"": None, "auto": "auto", "fp32": "float32", "float32": "float32",
            "bf16": "bfloat16", "bfloat16": "bfloat16"}[value]


BUILD_LABEL_VARS = {
    "AADS_BUILD_VERSION": "version",
    "AADS_BUILD_REVISION": "revision",
    "AADS_BUILD_CREATED": "created",
    "AADS_BUILD_SOURCE": "source",
    "AADS_IMAGE_DIGEST": "image_digest",
}


def _read_build_labels(env: Mapping[str, str]) -> dict[str, str]:
    return {label: env[var].strip() for var, label in BUILD_LABEL_VARS.items() if env.get(var, "").strip()}
