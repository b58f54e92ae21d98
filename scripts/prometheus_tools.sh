#!/usr/bin/env bash
# prometheus + promtool on the host, from Debian bookworm's `prometheus` package (2.42), without
# installing it: `apt-get download` fetches the .deb, `dpkg-deb -x` unpacks it, and the two static
# binaries are copied to $AADS_PROMETHEUS_TOOLS (build/tools/prometheus). No root needed.
# The tests check the rules with promtool and run a real Prometheus against real serving
# processes with them; the compose stack's Prometheus is the same package in an image
# (images/prometheus/Dockerfile).
#
#   bash scripts/prometheus_tools.sh          fetch when missing; prints the folder
#   bash scripts/prometheus_tools.sh --check  exit 1 when missing, change nothing
set -euo pipefail

DEST=${AADS_PROMETHEUS_TOOLS:-build/tools/prometheus}
if [[ -x $DEST/prometheus && -x $DEST/promtool ]]; then echo "$DEST"; exit 0; fi
[[ ${1:-} == --check ]] && { echo "prometheus tools: missing in $DEST (run: make prometheus-tools)" >&2; exit 1; }
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || { echo "prometheus tools: apt-get and dpkg-deb are needed (a Debian machine)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "prometheus tools: fetching Debian's prometheus package" >&2
# apt-get download writes into the current folder; -q keeps the log to errors.
(cd "$work" && apt-get download -q prometheus >/dev/null 2>"$work/apt.log") \
    || { echo "prometheus tools: apt-get download prometheus failed: $(tail -1 "$work/apt.log")" >&2; exit 1; }
dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
mkdir -p "$DEST"
install -m 0755 "$work/x/usr/bin/prometheus" "$work/x/usr/bin/promtool" "$DEST/"
"$DEST/promtool" --version 2>&1 | head -1 >&2
echo "$DEST"
