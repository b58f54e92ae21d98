#!/usr/bin/env bash
# The release workflow's login step (also fine by hand): make the registry named by AADS_REGISTRY
# trusted and logged in, then check access exactly as `orchestrator push` will use it.
#
#   REGISTRY_USERNAME, REGISTRY_PASSWORD   `docker login <host>`: the engine and the orchestrator both
#                                          read the Docker config it writes
#   REGISTRY_CA_CERT                       PEM of a private CA -> /etc/docker/certs.d/<host>/ca.crt
#                                          (the engine and the orchestrator both read it there)
#   neither                                the local registry of scripts/engine.sh: its credentials
#                                          file and `docker login` are already in place
#   PYTHON                                 the venv's python (default .venv/bin/python)
set -euo pipefail

registry=${AADS_REGISTRY:-127.0.0.1:5000/aads-ulora}
host=${registry%%/*}
python=${PYTHON:-.venv/bin/python}
as_root=()
[[ $(id -u) -eq 0 ]] || as_root=(sudo -n)

if [[ -n ${REGISTRY_CA_CERT:-} ]]; then
    "${as_root[@]}" mkdir -p "/etc/docker/certs.d/$host"
    printf '%s\n' "$REGISTRY_CA_CERT" | "${as_root[@]}" tee "/etc/docker/certs.d/$host/ca.crt" >/dev/null
    echo "registry-login: trusting the given CA for $host (/etc/docker/certs.d/$host/ca.crt)"
fi
if [[ -n ${REGISTRY_USERNAME:-} ]]; then
    printf '%s' "${REGISTRY_PASSWORD:-}" | docker login "$host" --username "$REGISTRY_USERNAME" --password-stdin
fi
"$python" -m orchestrator registry check "$registry"
