#!/usr/bin/env bash
# `packer fmt -check` and `packer validate` for every packer/<distro>.pkrvars.hcl, with the Packer that is installed
# (Debian's 1.6.6, or a modern one that is also given plugins/plugins.pkr.hcl). Needs no VM, no network, no build/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
command -v packer >/dev/null || "$repo/tools/apt-ensure.sh" packer
ver=$(packer version | head -1 | sed -E 's/^Packer v?([0-9.]+).*/\1/')
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ln -s "$repo"/packer/*.pkr.hcl "$tmp/"
ln -s "$repo/packer/scripts" "$tmp/scripts"
if [ "$(printf '%s\n1.7.0\n' "$ver" | sort -V | head -1)" = 1.7.0 ]; then
  ln -s "$repo/packer/plugins/plugins.pkr.hcl" "$tmp/plugins.pkr.hcl"
  packer fmt -check -recursive "$repo/packer"
  (cd "$tmp" && packer init . >/dev/null)
else
  packer fmt -check "$repo/packer"
  packer fmt -check "$repo/packer/plugins"
fi
# validate must not see an existing output directory, nor depend on a build: point every path at scratch space.
mkdir -p "$tmp/wheelhouse"
for vf in "$repo"/packer/*.pkrvars.hcl; do
  if ! (cd "$tmp" && packer validate -var-file="$vf" -var "output_directory=$tmp/out" -var "base_disk=$tmp/none.qcow2" \
      -var "provision_dir=$repo/provision" -var "app_dir=$repo/app" -var "manifest_dir=$tmp/manifest" \
      -var "serial_log=$tmp/serial.log" -var "wheelhouse_dir=$tmp/wheelhouse" . >"$tmp/validate.log" 2>&1); then
    cat "$tmp/validate.log" >&2
    echo "packer validate FAILED: $(basename "$vf")" >&2
    exit 1
  fi
  echo "packer validate OK: $(basename "$vf") (packer $ver)"
done
