#!/usr/bin/env bash
# Copy the declared version manifests into k8s/base/versions/ for the ConfigMap generator
# (kustomize cannot read files outside the kustomization root) and rewrite the generator's file
# list. Run after `orchestrator new-version`; tests/unit/test_k8s_manifests.py fails while a copy
# is stale or missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/k8s/base/versions"
kust="$root/k8s/base/kustomization.yaml"
list=""
for dir in "$root"/versions/*/; do
  v="$(basename "$dir")"
  mkdir -p "$dest/$v"
  cp "$dir/version.yaml" "$dir/adapter_spec.json" "$dest/$v/"
  list+="      - $v.version.yaml=versions/$v/version.yaml"$'\n'
  list+="      - $v.adapter_spec.json=versions/$v/adapter_spec.json"$'\n'
  echo "synced $v"
done
# Drop copies of versions that no longer exist.
for dir in "$dest"/*/; do
  [ -d "$root/versions/$(basename "$dir")" ] || { rm -rf "$dir"; echo "removed $(basename "$dir")"; }
done
LIST="$list" awk '
  /# BEGIN synced versions/ { print; printf "%s", ENVIRON["LIST"]; skip = 1; next }
  /# END synced versions/ { skip = 0 }
  !skip { print }
' "$kust" > "$kust.tmp" && mv "$kust.tmp" "$kust"
