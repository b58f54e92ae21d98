#!/usr/bin/env bash
# An engine where there is none: Docker engine + registry on 127.0.0.1:5000 + local base image
# + the compose v2 plugin. Each piece is checked first and only set up when missing, so on a
# machine where everything runs this takes about a second and changes nothing.
#
#   bash scripts/engine.sh            set up what is missing (root needed only for what is missing)
#   bash scripts/engine.sh --check    report each piece, change nothing (exit 1 if one is missing)
#
# Settings (env): AADS_REGISTRY_ADDR (127.0.0.1:5000), AADS_BASE_IMAGE (aads-base:bookworm),
# AADS_ENGINE_DIR (/var/lib/aads-engine: registry config, storage and logs),
# AADS_DEBIAN_MIRROR (http://deb.debian.org/debian).
# Needs only Debian's own tools: no image can be pulled on this project's machines, so the base
# image is bootstrapped from the Debian mirror (see images/base/README.md).
set -euo pipefail

REGISTRY_ADDR=${AADS_REGISTRY_ADDR:-127.0.0.1:5000}
BASE_IMAGE=${AADS_BASE_IMAGE:-aads-base:bookworm}
ENGINE_DIR=${AADS_ENGINE_DIR:-/var/lib/aads-engine}
MIRROR=${AADS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
COMPOSE_VERSION=2.26.1
CHECK_ONLY=0
[[ ${1:-} == --check ]] && CHECK_ONLY=1

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
# Written by scripts/engine.sh: a plain local registry for AADS-ULoRA images.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $ENGINE_DIR/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
}

registry() {
    if http_ok "http://$REGISTRY_ADDR/v2/"; then return 0; fi
    need_root "a registry on $REGISTRY_ADDR" || return 0
    mkdir -p "$ENGINE_DIR/registry/data"
    registry_config >"$ENGINE_DIR/registry/config.yml"
    say "starting docker-registry on $REGISTRY_ADDR (storage: $ENGINE_DIR/registry/data)"
    setsid docker-registry serve "$ENGINE_DIR/registry/config.yml" >"$ENGINE_DIR/registry.log" 2>&1 </dev/null &
    wait_for 30 "the registry on $REGISTRY_ADDR (see $ENGINE_DIR/registry.log)" http_ok "http://$REGISTRY_ADDR/v2/"
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
compose_plugin() {
    local plugins=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
    if docker compose version >/dev/null 2>&1; then return 0; fi
    if ((CHECK_ONLY)); then say "missing: docker compose v2 plugin"; MISSING=1; return 0; fi
    local work
    work=$(mktemp -d /var/tmp/aads-compose.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    # A private one-line source list: the system's apt sources stay untouched.
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" >"$work/sources.list"
    local apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "APT::Get::List-Cleanup=0"
        -o "Debug::NoLocking=1")
    say "fetching docker-compose $COMPOSE_VERSION from Debian trixie for the compose v2 plugin"
    apt-get "${apt_opts[@]}" update -qq >"$work/apt.log" 2>&1 || die "apt-get update (trixie) failed: $(tail -1 "$work/apt.log")"
    (cd "$work" && apt-get "${apt_opts[@]}" download "docker-compose=$COMPOSE_VERSION*" >>"$work/apt.log" 2>&1) \
        || die "apt-get download docker-compose=$COMPOSE_VERSION failed: $(tail -1 "$work/apt.log")"
    dpkg-deb -x "$work"/docker-compose_*.deb "$work/root"
    mkdir -p "$plugins"
    install -m 0755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" "$plugins/docker-compose"
    rm -rf "$work"
    trap - EXIT
    docker compose version >/dev/null || die "docker compose still fails after installing $plugins/docker-compose"
}

packages
if ((CHECK_ONLY)) && ((MISSING)); then exit 1; fi
engine
registry
base_image
compose_plugin
if ((CHECK_ONLY)); then
    ((MISSING)) && exit 1
    say "all present"
    exit 0
fi
say "ready: engine $(docker version -f '{{.Server.Version}}' 2>/dev/null), registry $REGISTRY_ADDR," \
    "base image $BASE_IMAGE, $(docker compose version --short 2>/dev/null | sed 's/^/compose v/')"
