#!/usr/bin/env bash
# `make image`: build the Kiln VPS image and its Vagrant box for one distro and one app. Run as root on a Debian/Ubuntu
# host.
#   packer/scripts/build.sh                     # DISTRO=debian-13, the reference app (app/)
#   DISTRO=ubuntu-24.04 APP_DIR=../mysite packer/scripts/build.sh      # `make image DISTRO=ubuntu-24.04 APP=../mysite`
# The app's contract ([tool.kiln] in APP_DIR/pyproject.toml) is checked first, in seconds: a contract that cannot
# work stops the build before anything is installed, downloaded or built.
# Stages (each prints its duration; all are recorded in the manifest, packer's phases too):
#   app-check -> deps -> base disk with the stack's distro packages || the app's wheelhouse (both native, in parallel, cached by
#   inputs in build/cache) -> accelerator probe -> seed (build user in a copy of the base disk) -> packer (boot, provision, verify, manifest, cleanup, scrub;
#   its console watched for a panic or a stuck kernel) -> compress (all host cores) -> vagrant box (loop-mount +
#   chroot edit of a copy) -> manifest + SHA256SUMS
# What is CPU-heavy is done natively: under emulation (TCG) the same apt or compiler work takes ~12x as long.
# Output: build/<distro>/ <name>.qcow2, <name>.libvirt.box, kiln-<distro>.box.json, <name>.manifest.json (with the
#         app's resolved contract), SHA256SUMS; <name> = kiln-<distro>-<app name>-<app version>-<version>, the app's name
#         and version from its pyproject.toml's [project] (kiln_app.py)
# Env:
#   DISTRO          debian-13 | ubuntu-24.04 [debian-13]
#   ACCEL           kvm | tcg [probe: packer/scripts/kvm-probe.sh]
#   KILN_VERSION    release version [<UTC date>.<time>, e.g. 2026.11.28.0315]
#   KILN_COMMIT     [tools/commit-id.sh: git rev-parse HEAD, "+dirty" when the tree has changes; "unknown" without git]
#   BUILD_DIR       [<repo>/build]
#   PROVISION_DIR   provisioner tree [<repo>/provision]; APP_DIR the app, the folder with manage.py [<repo>/app];
#                   CA_CERTS_DIR [/usr/local/share/ca-certificates]
#   BASE_IMAGE_URL / BASE_IMAGE_CHECKSUM (sha256:<hex>)  an official cloud image (qcow2) instead of the base disk
#   PACKER_LOG=1    packer debug log; NO_BOX=1 skips the Vagrant box; FORCE_BASE=1 rebuilds the base disk
#   KILN_CACHE_DIR  base disk builder roots and wheelhouses [<BUILD_DIR>/cache]; STALL_SECONDS [90] no console output
#                   before systemd starts = a stuck kernel
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
DISTRO=${DISTRO:-debian-13}
BUILD_DIR=${BUILD_DIR:-$repo/build}
PROVISION_DIR=${PROVISION_DIR:-$repo/provision}
APP_DIR=${APP_DIR:-$repo/app}
CA_CERTS_DIR=${CA_CERTS_DIR:-/usr/local/share/ca-certificates}
KILN_VERSION=${KILN_VERSION:-$(date -u +%Y.%m.%d.%H%M)}
KILN_COMMIT=${KILN_COMMIT:-$("$repo/tools/commit-id.sh")}
[ -f "packer/$DISTRO.pkrvars.hcl" ] || { echo "build: unknown DISTRO=$DISTRO (no packer/$DISTRO.pkrvars.hcl)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "build: run as root (mmdebstrap, loop devices)" >&2; exit 1; }
for d in "$PROVISION_DIR" "$APP_DIR"; do [ -d "$d" ] || { echo "build: missing $d" >&2; exit 1; }; done
[ -f "$PROVISION_DIR/install.sh" ] || { echo "build: missing $PROVISION_DIR/install.sh" >&2; exit 1; }
APP_DIR=$(cd "$APP_DIR" && pwd)
# The app's contract before anything slow: every problem named, nothing built.
kiln_app=$PROVISION_DIR/files/usr/local/lib/kiln/kiln_app.py
python3 "$kiln_app" check "$APP_DIR" --distro "$DISTRO" || { echo "build: the app's contract has problems (above)" >&2; exit 1; }
app_env=$(python3 "$kiln_app" show "$APP_DIR" --format env --distro "$DISTRO")
app_name=$(KILN_APP_ENV=$app_env bash -c 'eval "$KILN_APP_ENV"; printf "%s-%s" "$KILN_APP_NAME" "$KILN_APP_VERSION"' \
  | tr -c 'A-Za-z0-9._+-' '-')
# The base disk carries the app's runtime packages too (stack_packages, provision/lib/common.sh).
export KILN_APP_SRC=$APP_DIR

out=$BUILD_DIR/$DISTRO
work=$BUILD_DIR/work/$DISTRO
name=kiln-$DISTRO-$app_name-$KILN_VERSION
KILN_CACHE_DIR=${KILN_CACHE_DIR:-$BUILD_DIR/cache}
export KILN_CACHE_DIR
wheelhouse=$KILN_CACHE_DIR/$DISTRO-wheelhouse
base=$BUILD_DIR/base/$DISTRO.qcow2
if [ -n "${BASE_IMAGE_URL:-}" ]; then base=$BUILD_DIR/base/$DISTRO-official.qcow2; fi
mkdir -p "$out" "$work"
stages_file=$work/stages.tsv
: >"$stages_file"
build_start=$(date +%s)
loop="" vmpid="" whpid=""

cleanup() {
  local rc=$?
  local p
  for p in $vmpid $whpid; do kill "$p" 2>/dev/null || true; done
  # packer kills its own QEMU on error/interrupt; make sure none of this build's is left.
  for p in $(pgrep -f "qemu-system-x86_64.*$work/" 2>/dev/null || true); do kill "$p" 2>/dev/null || true; done
  if [ -n "$loop" ]; then partx -d "$loop" 2>/dev/null || true; losetup -d "$loop" 2>/dev/null || true; fi
  rm -rf "$work/box" "$work/template" "$work/build-disk".*
  if [ $rc -ne 0 ]; then echo "==> build FAILED (rc=$rc) after $(( $(date +%s) - build_start ))s; logs in $work" >&2; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stage() { # stage NAME CMD... : run, print and record the duration
  local n=$1; shift
  printf '\n==> [%s] %s  (%s)\n' "$DISTRO" "$n" "$(date -u +%T)"
  local t0; t0=$(date +%s)
  "$@"
  local dt=$(( $(date +%s) - t0 ))
  printf '<== [%s] %s done in %ss\n' "$DISTRO" "$n" "$dt"
  printf '%s\t%s\n' "$n" "$dt" >>"$stages_file"
}

deps() {
  "$repo/tools/apt-ensure.sh" packer qemu-system-x86 qemu-utils mmdebstrap fdisk e2fsprogs util-linux \
    debian-archive-keyring openssh-client curl jq genisoimage eatmydata systemd-container
  if [ "$DISTRO" = ubuntu-24.04 ] && [ -z "${BASE_IMAGE_URL:-}" ]; then "$repo/tools/apt-ensure.sh" ubuntu-keyring; fi
  packer version | head -1
}

base_disk() {
  if [ -n "${BASE_IMAGE_URL:-}" ]; then
    # An official cloud image (qcow2) instead: downloaded once, checked against BASE_IMAGE_CHECKSUM (sha256:<hex>).
    local want=${BASE_IMAGE_CHECKSUM:?set BASE_IMAGE_CHECKSUM=sha256:<hex> with BASE_IMAGE_URL}
    [[ $want == sha256:* ]] || { echo "build: BASE_IMAGE_CHECKSUM must be sha256:<hex>" >&2; return 2; }
    if [ "$(sha256sum "$base" 2>/dev/null | cut -d' ' -f1)" != "${want#sha256:}" ]; then
      mkdir -p "$(dirname "$base")"
      curl -fL --retry 3 -o "$base.tmp" "$BASE_IMAGE_URL"
      [ "$(sha256sum "$base.tmp" | cut -d' ' -f1)" = "${want#sha256:}" ] \
        || { echo "build: $BASE_IMAGE_URL does not match BASE_IMAGE_CHECKSUM" >&2; rm -f "$base.tmp"; return 1; }
      mv -f "$base.tmp" "$base"
    fi
    echo "base: official image $BASE_IMAGE_URL ($base)"
    return
  fi
  FORCE=${FORCE_BASE:-} "$repo/packer/scripts/build-base-disk.sh" "$DISTRO" "$base"
}

# Base disk and wheelhouse are independent and mostly download + native work: side by side on the host's cores.
prepare() {
  local t0 rc=0 dt
  t0=$(date +%s)
  ( w0=$(date +%s); "$repo/packer/scripts/build-wheelhouse.sh" "$DISTRO" "$APP_DIR" "$wheelhouse"
    echo "$(( $(date +%s) - w0 ))" >"$work/wheelhouse.secs" ) >"$work/wheelhouse.log" 2>&1 &
  whpid=$!
  stage base-disk base_disk
  wait "$whpid" || rc=$?
  whpid=""
  dt=$(( $(date +%s) - t0 ))
  sed 's/^/    /' "$work/wheelhouse.log"
  [ "$rc" -eq 0 ] || { echo "build: the wheelhouse failed (rc=$rc, log above)" >&2; return 1; }
  printf 'wheelhouse (beside base-disk)\t%s\n' "$(cat "$work/wheelhouse.secs")" >>"$stages_file"
  echo "base disk and wheelhouse ready in ${dt}s"
}

probe() {
  ACCEL=$("$repo/packer/scripts/kvm-probe.sh")
  echo "accelerator: $ACCEL"
}

# The build VM's only way in: a throw-away user and key pair made for this build, written natively into a copy of
# the base disk together with DHCP for its NIC and SSH host keys, and cloud-init switched off for this boot only (under emulation its
# four stages cost minutes before SSH; a server's first boot still runs it: guest-scrub.sh removes all three).
seed() {
  rm -rf "$work/keys" "$work/build-disk".*; mkdir -p "$work/keys"
  ssh-keygen -q -t ed25519 -N '' -C "kiln-build-$KILN_VERSION" -f "$work/keys/build_key"
  qemu-img convert -O raw "$base" "$work/build-disk.raw"
  # shellcheck disable=SC2016  # expanded by disk-edit.sh
  "$repo/packer/scripts/disk-edit.sh" "$work/build-disk.raw" '
    mnt=$1 pub=$2 user=$3
    chroot "$mnt" useradd --create-home --user-group --shell /bin/bash "$user"
    chroot "$mnt" usermod -p "*" "$user"
    install -d -m 0700 -o "$(chroot "$mnt" id -u "$user")" -g "$(chroot "$mnt" id -g "$user")" "$mnt/home/$user/.ssh"
    install -m 0600 -o "$(chroot "$mnt" id -u "$user")" -g "$(chroot "$mnt" id -g "$user")" "$pub" \
      "$mnt/home/$user/.ssh/authorized_keys"
    printf "%s ALL=(ALL) NOPASSWD:ALL\n" "$user" >"$mnt/etc/sudoers.d/90-kiln-build"
    chmod 0440 "$mnt/etc/sudoers.d/90-kiln-build"
    chroot "$mnt" visudo -cqf /etc/sudoers.d/90-kiln-build
    mkdir -p "$mnt/etc/systemd/network"
    printf "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n" >"$mnt/etc/systemd/network/10-kiln-build.network"
    touch "$mnt/etc/cloud/cloud-init.disabled"
    # SSH host keys for the build VM only (cloud-init would have made them): cleanup.sh and guest-scrub.sh remove them.
    chroot "$mnt" ssh-keygen -A >/dev/null
  ' "$work/keys/build_key.pub" kilnbuild
  qemu-img convert -O qcow2 "$work/build-disk.raw" "$work/build-disk.qcow2"
  rm -f "$work/build-disk.raw"
}

run_packer() {
  local ver modern=0
  ver=$(packer version | head -1 | sed -E 's/^Packer v?([0-9.]+).*/\1/')
  if [ "$(printf '%s\n1.7.0\n' "$ver" | sort -V | head -1)" = 1.7.0 ]; then modern=1; fi
  # The template is assembled in a staging folder: modern Packer also gets plugins/plugins.pkr.hcl (1.6.6 rejects it).
  rm -rf "$work/template"; mkdir -p "$work/template"
  ln -s "$repo"/packer/*.pkr.hcl "$work/template/"
  ln -s "$repo/packer/scripts" "$work/template/scripts"
  if [ $modern -eq 1 ]; then
    ln -s "$repo/packer/plugins/plugins.pkr.hcl" "$work/template/plugins.pkr.hcl"
    (cd "$work/template" && packer init .)
  fi
  rm -rf "$work/packer" "$work/manifest"; mkdir -p "$work/manifest"; : >"$work/serial.log"
  local args=(
    -var-file="$repo/packer/$DISTRO.pkrvars.hcl"
    -var "accelerator=$ACCEL"
    -var "base_disk=$work/build-disk.qcow2"
    -var "base_disk_checksum=sha256:$(sha256sum "$work/build-disk.qcow2" | cut -d' ' -f1)"
    -var "output_directory=$work/packer"
    -var "vm_name=$name.qcow2"
    -var "ssh_private_key_file=$work/keys/build_key"
    -var "serial_log=$work/serial.log"
    -var "manifest_dir=$work/manifest"
    -var "wheelhouse_dir=$wheelhouse"
    -var "provision_dir=$PROVISION_DIR"
    -var "app_dir=$APP_DIR"
    -var "ca_certs_dir=$CA_CERTS_DIR"
    -var "kiln_version=$KILN_VERSION"
    -var "kiln_commit=$KILN_COMMIT"
  )
  (cd "$work/template" && packer validate "${args[@]}" .)
  watch_console &
  local watcher=$!
  local rc=0
  (cd "$work/template" && packer build -force -color=false -timestamp-ui "${args[@]}" .) 2>&1 | tee "$work/packer.log" \
    || rc=$?
  kill "$watcher" 2>/dev/null || true; wait "$watcher" 2>/dev/null || true
  packer_phases "$work/packer.log" >>"$stages_file" || true
  [ "$rc" -eq 0 ] || return "$rc"
  [ -s "$work/packer/$name.qcow2" ] || { echo "build: packer produced no $work/packer/$name.qcow2" >&2; return 1; }
  rm -rf "$work/keys" "$work/build-disk".*
}

# The build VM's console: a panic or a kernel that never gets to systemd is reported and ends the build at once.
watch_console() {
  local qpid=""
  for _ in $(seq 1 300); do
    qpid=$(pgrep -f "qemu-system-x86_64.*$work/serial.log" | head -1 || true)
    [ -n "$qpid" ] && break
    sleep 1
  done
  [ -n "$qpid" ] || exit 0
  "$repo/packer/scripts/serial-watch.sh" "$work/serial.log" "$qpid" "${STALL_SECONDS:-90}"
}

# Seconds of each phase inside packer, from its -timestamp-ui log: what the emulated guest spends where.
packer_phases() {
  python3 - "$1" <<'PY'
import re, sys, datetime
marks = [("boot to ssh", r"Waiting for SSH|Starting VM|Copying hard drive"), ("upload", r"Uploading "),
         ("provision/install.sh", r"==> provision/install.sh"), ("verify", r"==> verify"),
         ("guest manifest", r"guest-manifest.sh"), ("cleanup.sh", r"==> provision/cleanup.sh"),
         ("scrub", r"guest-scrub.sh"), ("shutdown", r"Gracefully halting"), ("end", r"Build '.*' finished")]
seen, order = {}, []
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z?: ?(.*)", line)
    if not m:
        continue
    t = datetime.datetime.fromisoformat(m.group(1))
    for name, rx in marks:
        if name not in seen and re.search(rx, m.group(2)):
            seen[name] = t; order.append(name)
for a, b in zip(order, order[1:]):
    print(f"packer: {a}\t{int((seen[b] - seen[a]).total_seconds())}")
PY
}

# One compression pass over packer's raw result, with all cores (qemu-img compresses clusters in parallel threads).
# zlib, not zstd: providers' importers read zlib-compressed qcow2.
compress() {
  qemu-img convert -p -O qcow2 -c -m 8 -W "$work/packer/$name.qcow2" "$out/$name.qcow2.tmp" | tr '\r' '\n' | tail -1
  mv -f "$out/$name.qcow2.tmp" "$out/$name.qcow2"
  echo "image: $out/$name.qcow2 ($(du -h "$out/$name.qcow2" | cut -f1); uncompressed $(du -h "$work/packer/$name.qcow2" | cut -f1))"
}

box() {
  # From packer's uncompressed output: the box is re-compressed anyway, no need to inflate the VPS image again.
  "$repo/packer/scripts/make-vagrant-box.sh" "$work/packer/$name.qcow2" "$out/$name.libvirt.box" "$work/box"
  local sum; sum=$(sha256sum "$out/$name.libvirt.box" | cut -d' ' -f1)
  jq -n --arg name "kiln/$DISTRO" --arg v "$KILN_VERSION" --arg url "file://$out/$name.libvirt.box" --arg sum "$sum" \
     --arg desc "Kiln $DISTRO image (commit $KILN_COMMIT)" \
     '{name:$name, description:$desc, versions:[{version:$v, providers:[{name:"libvirt", url:$url,
        checksum_type:"sha256", checksum:$sum}]}]}' >"$out/kiln-$DISTRO.box.json"
  echo "box: $out/$name.libvirt.box ($(du -h "$out/$name.libvirt.box" | cut -f1)); metadata $out/kiln-$DISTRO.box.json"
}

manifest() {
  python3 "$kiln_app" show "$APP_DIR" --format json --distro "$DISTRO" >"$work/app.json"
  "$repo/packer/scripts/make-manifest.sh" "$work/manifest/guest.tar" "$stages_file" "$out" "$name" \
    "$DISTRO" "$KILN_VERSION" "$KILN_COMMIT" "$ACCEL" "$(( $(date +%s) - build_start ))" "$work/app.json"
  (cd "$out" && rm -f SHA256SUMS && sha256sum -- "$name".* >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS && cat SHA256SUMS)
}

echo "==> kiln image build: DISTRO=$DISTRO app=$app_name ($APP_DIR) KILN_VERSION=$KILN_VERSION KILN_COMMIT=$KILN_COMMIT out=$out"
stage deps deps
stage prepare prepare
stage accel-probe probe
stage seed seed
stage packer run_packer
stage compress compress
if [ -z "${NO_BOX:-}" ]; then stage vagrant-box box; fi
rm -rf "$work/packer"
stage manifest manifest
printf '\n==> build done in %ss:\n' "$(( $(date +%s) - build_start ))"
column -t -s $'\t' "$stages_file" 2>/dev/null || cat "$stages_file"
ls -la "$out"
