"""`python -m serving`: the service on uvicorn (0.0.0.0:8000 unless AADS_HOST / AADS_PORT say otherwise).

SIGTERM (docker stop, a Kubernetes pod deletion, the blue/green switch retiring a colour):
readiness answers 503 at once, the listening socket closes, in-flight requests finish (up to
AADS_GRACEFUL_TIMEOUT_S), queued batches run, then the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import uvicorn

from serving.app import create_app
from serving.audit import AUDIT_LOGGER
from serving.settings import Settings, SettingsError


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, telling the app at the first signal so /ready turns 503 while draining."""

    def __init__(self, config: uvicorn.Config, on_exit_signal):
        super().__init__(config)
        self._on_exit_signal = on_exit_signal

    def handle_exit(self, sig, frame) -> None:
        self._on_exit_signal()
        super().handle_exit(sig, frame)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Audit lines are JSON documents on stdout, one per request, without any prefix.
    audit = logging.getLogger(AUDIT_LOGGER)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
    audit.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve the AADS-ULoRA diagnosis API. Every setting comes from AADS_* variables "
        "(docs/api.md); --host/--port override AADS_HOST/AADS_PORT.",
    )
    parser.add_argument("--host", help="address to listen on (default AADS_HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default AADS_PORT or 8000)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    if not 1 <= port <= 65535:
        print(f"error: --port {port}: expected 1 to 65535", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=False,  # the audit line replaces it
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s) or None,
        # X-Forwarded-For is read by serving.security.ForwardedClient, from AADS_TRUSTED_PROXIES only.
        proxy_headers=False,
        server_header=False,
        # Past this many connections + requests, uvicorn answers 503 at once instead of queueing
        # without bound (the edge's maxconn keeps well under it).
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
    )
    server = _GracefulServer(config, on_exit_signal=app.state.runtime.begin_shutdown)
    # uvicorn re-raises the signal once it has drained; with this handler a clean drain exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
