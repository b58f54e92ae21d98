"""Real registries for the tests: Debian's `docker-registry` with TLS from a CA the test makes,
htpasswd (basic) auth or token auth from a small JWT issuer (see each module)."""
