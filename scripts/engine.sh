#!/usr/bin/env bash
# An engine where there is none: Docker engine + registry on 127.0.0.1:5000 + local base image
# + the compose v2 plugin + kubectl. Each piece is checked first and only set up when missing, so on a
# machine where everything runs this takes about a second and changes nothing.
#
#   bash scripts/engine.sh            set up what is missing (root needed only for what is missing)
#   bash scripts/engine.sh --check    report each piece, change nothing (exit 1 if one is missing)
#   bash scripts/engine.sh --kubectl  only kubectl (no root needed; the fast tests render k8s/ with it)
#
# Settings (env): AADS_REGISTRY_ADDR (127.0.0.1:5000), AADS_BASE_IMAGE (aads-base:bookworm),
# AADS_ENGINE_DIR (/var/lib/aads-engine: registry config, storage, credentials and logs),
# AADS_REGISTRY_USER (aads), AADS_DEBIAN_MIRROR (http://deb.debian.org/debian), AADS_KUBECTL_DIR
# (where kubectl goes when none new enough is on PATH: /usr/local/bin as root, ~/.local/bin otherwise).
# The registry asks for basic auth (htpasswd) and refuses deletes. Its credentials are made once
# and kept in $AADS_ENGINE_DIR/registry/credentials.json (mode 0600, owned by the user who ran
# `sudo make engine`), which the orchestrator reads; that user is also logged in (`docker login`)
# so the docker CLI and SDK push and pull as before. A registry already answering on the
# address is left as it is.
# Needs only Debian's own tools: no image can be pulled on this project's machines, so the base
# image is bootstrapped from the Debian mirror (see images/base/README.md).
set -euo pipefail

REGISTRY_ADDR=${AADS_REGISTRY_ADDR:-127.0.0.1:5000}
BASE_IMAGE=${AADS_BASE_IMAGE:-aads-base:bookworm}
ENGINE_DIR=${AADS_ENGINE_DIR:-/var/lib/aads-engine}
REGISTRY_USER=${AADS_REGISTRY_USER:-aads}
CREDENTIALS=$ENGINE_DIR/registry/credentials.json
MIRROR=${AADS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
COMPOSE_VERSION=2.26.1
KUBECTL_VERSION=1.32.3
KUBECTL_MIN_MINOR=26  # kustomize v5 and today's `rollout` semantics; Debian 12's 1.20 is too old
CHECK_ONLY=0
[[ ${1:-} == --check ]] && CHECK_ONLY=1
KUBECTL_ONLY=0
[[ ${1:-} == --kubectl ]] && KUBECTL_ONLY=1

say() { printf 'engine: %s\n' "$*" >&2; }
die() { printf 'engine: error: %s\n' "$*" >&2; exit 1; }
is_root() { [[ $(id -u) -eq 0 ]]; }

# Stop here when a missing piece needs root (or when only checking): one clear line.
need_root() {
    local what=$1
    if ((CHECK_ONLY)); then say "missing: $what"; MISSING=1; return 1; fi
    is_root || die "$what is missing and setting it up needs root: run \`sudo make engine\` (or sudo bash scripts/engine.sh)"
}
MISSING=0

http_ok() {  # url -> 0 when it answers 200/401 (curl may be absent on a fresh machine)
    python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code == 401 else 1)
except Exception:
    sys.exit(1)
EOF
}

wait_for() {  # seconds description command... -> polls until the command succeeds
    local seconds=$1 what=$2; shift 2
    for ((i = 0; i < seconds * 2; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "$what did not come up within ${seconds}s"
}

# 1. packages ----------------------------------------------------------------------------------
packages() {
    local missing=()
    command -v dockerd >/dev/null && command -v docker >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v htpasswd >/dev/null || missing+=(apache2-utils)
    ((${#missing[@]})) || return 0
    need_root "packages ${missing[*]}" || return 0
    say "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# 2. the engine --------------------------------------------------------------------------------
engine() {
    if docker info >/dev/null 2>&1; then return 0; fi
    # A socket that answers "permission denied" is a running engine this user may not use.
    local answer
    answer=$(docker info 2>&1) || true
    if ! is_root && grep -qi 'permission denied' <<<"$answer"; then
        die "a Docker engine runs but $(id -un) may not use it: add the user to the docker group or use sudo"
    fi
    need_root "a running Docker engine" || return 0
    mkdir -p "$ENGINE_DIR"
    say "starting dockerd (log: $ENGINE_DIR/dockerd.log)"
    # setsid: the engine outlives this script and the make that ran it.
    setsid dockerd >"$ENGINE_DIR/dockerd.log" 2>&1 </dev/null &
    wait_for 60 "dockerd (see $ENGINE_DIR/dockerd.log)" docker info
}

# 3. the registry ------------------------------------------------------------------------------
registry_config() {
    cat <<EOF
# Written by scripts/engine.sh: the local registry for AADS-ULoRA images (basic auth, no deletes).
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $ENGINE_DIR/registry/data
  delete:
    enabled: false
auth:
  htpasswd:
    realm: aads-local-registry
    path: $ENGINE_DIR/registry/htpasswd
http:
  addr: $REGISTRY_ADDR
EOF
}

# The user the credentials are for: the one behind sudo, else the caller.
owner() { printf '%s' "${SUDO_USER:-$(id -un)}"; }

credentials_field() {  # field -> its value in the credentials file
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$CREDENTIALS" "$1"
}

# Made once: a random password in a 0600 JSON file (the orchestrator reads it), its bcrypt in htpasswd.
registry_credentials() {
    if [[ ! -s $CREDENTIALS ]]; then
        say "making registry credentials for user $REGISTRY_USER ($CREDENTIALS, mode 0600)"
        (umask 077 && python3 -c '
import json, secrets, sys
with open(sys.argv[1], "w") as f:
    json.dump({"registry": sys.argv[2], "username": sys.argv[3], "password": secrets.token_urlsafe(24)}, f)
' "$CREDENTIALS" "$REGISTRY_ADDR" "$REGISTRY_USER")
    fi
    chmod 600 "$CREDENTIALS"
    chown "$(owner)" "$CREDENTIALS" 2>/dev/null || true
    (umask 077 && credentials_field password \
        | htpasswd -iBn "$(credentials_field username)" >"$ENGINE_DIR/registry/htpasswd")
}

# `docker login` for that user too, so the docker CLI and SDK push and pull as before.
registry_login() {
    local who
    who=$(owner)
    if credentials_field password | runuser -u "$who" -- docker login "$REGISTRY_ADDR" \
        --username "$(credentials_field username)" --password-stdin >/dev/null 2>&1; then
        say "logged $who in to $REGISTRY_ADDR (docker login)"
    else
        say "warning: \`docker login $REGISTRY_ADDR\` as $who failed: log in with the credentials in $CREDENTIALS"
    fi
}

registry() {
    if http_ok "http://$REGISTRY_ADDR/v2/"; then return 0; fi
    need_root "a registry on $REGISTRY_ADDR" || return 0
    mkdir -p "$ENGINE_DIR/registry/data"
    registry_credentials
    registry_config >"$ENGINE_DIR/registry/config.yml"
    say "starting docker-registry on $REGISTRY_ADDR (storage: $ENGINE_DIR/registry/data, basic auth)"
    setsid docker-registry serve "$ENGINE_DIR/registry/config.yml" >"$ENGINE_DIR/registry.log" 2>&1 </dev/null &
    echo $! >"$ENGINE_DIR/registry.pid"
    wait_for 30 "the registry on $REGISTRY_ADDR (see $ENGINE_DIR/registry.log)" http_ok "http://$REGISTRY_ADDR/v2/"
    registry_login
    if [[ $CREDENTIALS != /var/lib/aads-engine/registry/credentials.json ]]; then
        say "for the orchestrator: export AADS_REGISTRY_CREDENTIALS_FILE=$CREDENTIALS"
    fi
}

# 4. the local base image ----------------------------------------------------------------------
base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return 0; fi
    need_root "the base image $BASE_IMAGE" || return 0
    local root
    root=$(mktemp -d /var/tmp/aads-base.XXXXXX)
    # shellcheck disable=SC2064 # expand now: the trap must remove this very directory
    trap "rm -rf '$root'" EXIT
    say "bootstrapping Debian bookworm into $root (about a minute)"
    # The mirror is plain http: the Release file's signature (Debian's archive keyring) vouches for
    # every package's hash; debootstrap refuses what does not verify.
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -s "$keyring" ] || die "$keyring is missing: apt-get install debian-archive-keyring"
    debootstrap --keyring="$keyring" --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$MIRROR" >"$ENGINE_DIR/debootstrap.log" 2>&1 \
        || die "debootstrap failed (see $ENGINE_DIR/debootstrap.log)"
    grep -q "Valid Release signature" "$ENGINE_DIR/debootstrap.log" \
        || die "debootstrap did not verify the Release signature (see $ENGINE_DIR/debootstrap.log)"
    # Checked after bootstrap: every installed file still matches its package's recorded md5sum.
    local changed
    changed=$(chroot "$root" dpkg --verify 2>&1 | grep -v ' c /' || true)
    [ -z "$changed" ] || die "the bootstrapped tree differs from its packages: ${changed%%$'\n'*}"
    # Package lists and caches are not needed inside the image.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
    say "importing $BASE_IMAGE"
    tar -C "$root" -c . | docker import \
        -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' \
        -m "debootstrap --variant=minbase bookworm (scripts/engine.sh)" - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    trap - EXIT
}

# 5. the compose v2 plugin (Debian trixie's docker-compose, one static binary) -----------------
# Download one package from Debian trixie into $2 with apt pointed at a private one-line source
# list, so the system's apt sources stay untouched; prints the .deb's path.
trixie_download() {  # package=version-glob workdir
    local spec=$1 work=$2
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" >"$work/sources.list"
    local apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "APT::Get::List-Cleanup=0"
        -o "Debug::NoLocking=1")
    apt-get "${apt_opts[@]}" update -qq >"$work/apt.log" 2>&1 || die "apt-get update (trixie) failed: $(tail -1 "$work/apt.log")"
    (cd "$work" && apt-get "${apt_opts[@]}" download "$spec" >>"$work/apt.log" 2>&1) \
        || die "apt-get download $spec failed: $(tail -1 "$work/apt.log")"
    ls "$work/${spec%%=*}"_*.deb
}

compose_plugin() {
    local plugins=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
    if docker compose version >/dev/null 2>&1; then return 0; fi
    if ((CHECK_ONLY)); then say "missing: docker compose v2 plugin"; MISSING=1; return 0; fi
    local work deb
    work=$(mktemp -d /var/tmp/aads-compose.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    say "fetching docker-compose $COMPOSE_VERSION from Debian trixie for the compose v2 plugin"
    deb=$(trixie_download "docker-compose=$COMPOSE_VERSION*" "$work")
    dpkg-deb -x "$deb" "$work/root"
    mkdir -p "$plugins"
    install -m 0755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" "$plugins/docker-compose"
    rm -rf "$work"
    trap - EXIT
    docker compose version >/dev/null || die "docker compose still fails after installing $plugins/docker-compose"
}

# 6. kubectl (Debian trixie's kubectl 1.32, one static binary): renders k8s/ and drives the -----
#    Kubernetes tests against the API double. Debian 12's kubernetes-client (1.20) is too old.
kubectl_minor() {  # binary -> its client minor version, or nothing
    "$1" version --client -o json 2>/dev/null | python3 -c \
        'import json,sys; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")))' 2>/dev/null
}

kubectl_ok() {  # binary -> 0 when it is new enough
    local minor
    minor=$(kubectl_minor "$1") && [[ -n $minor ]] && ((minor >= KUBECTL_MIN_MINOR))
}

kubectl_client() {
    local dest=${AADS_KUBECTL_DIR:-}
    [[ -n $dest ]] || { is_root && dest=/usr/local/bin || dest=$HOME/.local/bin; }
    local found
    found=$(command -v kubectl || true)
    if [[ -n $found ]] && kubectl_ok "$found"; then return 0; fi
    if [[ -x $dest/kubectl ]] && kubectl_ok "$dest/kubectl"; then
        say "kubectl $KUBECTL_VERSION is in $dest, which is not on PATH ahead of ${found:-nothing}: add it to PATH"
        return 0
    fi
    if ((CHECK_ONLY)); then say "missing: kubectl >= 1.$KUBECTL_MIN_MINOR${found:+ ($found is older)}"; MISSING=1; return 0; fi
    local work deb
    work=$(mktemp -d /var/tmp/aads-kubectl.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    say "fetching kubectl $KUBECTL_VERSION from Debian trixie into $dest"
    deb=$(trixie_download "kubectl=$KUBECTL_VERSION*" "$work")
    dpkg-deb -x "$deb" "$work/root"
    mkdir -p "$dest"
    install -m 0755 "$work/root/usr/bin/kubectl" "$dest/kubectl"
    rm -rf "$work"
    trap - EXIT
    kubectl_ok "$dest/kubectl" || die "$dest/kubectl does not run after installing it"
    found=$(command -v kubectl || true)
    [[ $found == "$dest/kubectl" ]] || say "note: put $dest on PATH ahead of ${found:-nothing} to use it"
}

if ((KUBECTL_ONLY)); then
    kubectl_client
    exit 0
fi
packages
if ((CHECK_ONLY)) && ((MISSING)); then exit 1; fi
engine
registry
base_image
compose_plugin
kubectl_client
if ((CHECK_ONLY)); then
    ((MISSING)) && exit 1
    say "all present"
    exit 0
fi
say "ready: engine $(docker version -f '{{.Server.Version}}' 2>/dev/null), registry $REGISTRY_ADDR," \
    "base image $BASE_IMAGE, $(docker compose version --short 2>/dev/null | sed 's/^/compose v/')," \
    "kubectl $(kubectl version --client -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])' 2>/dev/null)"
