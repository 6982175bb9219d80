#!/usr/bin/env bash
# Sourced by boot-check.sh: its instance a is a Hetzner Cloud server, a cloud whose metadata comes over HTTP. The
# qcow2 boots as Hetzner would start it: SMBIOS says Hetzner (system-manufacturer Hetzner, product vServer, serial =
# the instance id: what ds-identify and cloud-init's Hetzner datasource look at), no seed disk, and Hetzner's metadata
# API (tests/image/metadata_server.py: instance-id, hostname, public-keys, network-config, user-data) answers at
# 169.254.169.254:80 through QEMU's user network (guestfwd). hetzner_check then reads, over SSH with the key the
# metadata served:
#   - the key logs in as `debian` (cloud-init's default user on Debian, sudo without password); root only has
#     cloud-init's "log in as debian" stub (and sshd refuses root anyway);
#   - the hostname is the served one, and the served network config was rendered (NIC with the served MAC renamed
#     eth0, 10-cloud-init-eth0.network);
#   - the user-data's write_files landed (/etc/kiln/overrides.env, 0600) before the first boot read it (kiln.env;
#     its JOB_TIMEOUT in the workers' and supervisor's stop waits);
#   - cloud-init is done without errors, datasource Hetzner; the three kiln-firstboot units are active;
#   - ds-identify (the image's own, with the image's datasource_list) picks the datasource of every provider the
#     README names, given the DMI values and disk labels it looks at (faked for it in a scratch directory), and
#     disables cloud-init on a machine that is none of them.
# The boot fails early, without waiting for BOOT_TIMEOUT, when the guest reaches its login prompt or ends
# cloud-init's local stage without having asked for the metadata (the datasource is not enabled or not detected).
# hetzner_diagnose prints the serial console's tail, the metadata server's request log and, if SSH works,
# `cloud-init status --long` and ds-identify's log (boot-check.sh's fail calls it while instance a runs).
# Network: the user network is restricted (restrict=on): the guest reaches nothing but the forwarded metadata address
# and the host reaches it only through the loopback ports forwarded to 22/80/443. libslirp only forwards a guest
# address inside the virtual network, so that network is 169.254.169.0/24 (guest 169.254.169.15 by DHCP, which is
# also what cloud-init's ephemeral DHCP in the local stage gets).
#   hetzner_setup NAME   the metadata of instance NAME (served key: $work/key.pub) in $work/metadata; checks the
#                        server answers
#   boot_hetzner NAME    boots NAME as that server (for boot_retry, vm-boot.sh)
#   hetzner_check NAME   the checks above over SSH as debian
# The caller (boot-check.sh) sets repo, work, SSH_OPTS, IMAGE and defines say and fail.
# shellcheck disable=SC2154  # work, repo, SSH_OPTS, IMAGE, P22, vmpid: boot-check.sh's and vm-boot.sh's
HETZNER_HOST=kiln-metadata-check
HETZNER_MAC=96:00:00:4b:1e:01
HETZNER_NAME=""
HETZNER_SERVER=$repo/tests/image/metadata_server.py

hetzner_setup() { # hetzner_setup NAME: Hetzner's metadata for instance NAME (the serial must be the instance id)
  local md=$work/metadata server=$HETZNER_SERVER
  HETZNER_NAME=$1
  HETZNER_IID=$(( $(date +%s) % 90000000 + 10000000 ))
  cat >"$work/user-data" <<'EOF'
#cloud-config
write_files:
  - path: /etc/kiln/overrides.env
    permissions: "0600"
    content: |
      LOG_LEVEL=WARNING
      JOB_TIMEOUT=600
EOF
  python3 "$server" write "$md" --instance-id "$HETZNER_IID" --hostname "$HETZNER_HOST" --mac "$HETZNER_MAC" \
    --public-key "$work/key.pub" --user-data "$work/user-data"
  # QEMU splits the guestfwd command at spaces (and its option parser at commas, which ",," escapes).
  case "$server$md" in *' '*) fail "a space in $server or $md: QEMU's guestfwd command cannot carry it" ;; esac
  # The server answers before the guest depends on it (a broken server would otherwise cost a whole boot to find).
  printf 'GET /hetzner/v1/metadata/instance-id HTTP/1.0\r\n\r\n' | python3 -I "$server" serve "$md" | grep -qx "$HETZNER_IID" \
    || fail "metadata_server.py does not serve instance-id $HETZNER_IID"
  : >"$md/requests.log"
  say "$1: a Hetzner instance, id $HETZNER_IID, its metadata API at 169.254.169.254"
}

# boot_watch (vm-boot.sh, every poll of every boot): the Hetzner instance has ended cloud-init's local stage, where
# the Hetzner datasource reads the metadata, or shows its login prompt, and nothing asked for the metadata: it never
# will.
boot_watch() {
  [ "$1" = "$HETZNER_NAME" ] || return 0
  grep -q ' "GET /hetzner/v1/metadata HTTP' "$work/metadata/requests.log" && return 0
  if grep -aqE 'Finished .*cloud-init-local\.service|login: ' "$2"; then
    fail "$1: the guest booted without asking for the metadata (no Hetzner datasource enabled or detected?)"
  fi
}

boot_hetzner() { # boot_hetzner NAME: as a Hetzner server, metadata at 169.254.169.254 (the server runs once per guest connection)
  local net="net=169.254.169.0/24,host=169.254.169.2,dns=169.254.169.3,dhcpstart=169.254.169.15,restrict=on"
  local server=$HETZNER_SERVER md=$work/metadata
  boot_vm "$1" "$net,guestfwd=tcp:169.254.169.254:80-cmd:python3 -I ${server//,/,,} serve ${md//,/,,}" \
    "mac=$HETZNER_MAC" -smbios "type=1,manufacturer=Hetzner,product=vServer,serial=$HETZNER_IID"
}

hetzner_diagnose() { # on a failure of the Hetzner instance: what the console, the metadata server and cloud-init saw
  local n=$HETZNER_NAME
  if [ -s "$work/$n-serial.log" ]; then
    echo "--- serial console (last 40 lines)" >&2
    tr -d '\r' <"$work/$n-serial.log" | sed -E 's/\x1b(\[[0-9;?!]*[A-Za-z]|\][0-9;]*)//g' | tail -40 >&2 # no terminal escapes
  fi
  echo "--- metadata server's request log" >&2
  if [ -s "$work/metadata/requests.log" ]; then cat "$work/metadata/requests.log" >&2; else echo "(no request)" >&2; fi
  if [ -n "$vmpid" ] && timeout 60 ssh "${SSH_OPTS[@]}" -p "$P22" debian@127.0.0.1 true 2>/dev/null; then
    echo "--- cloud-init status --long; ds-identify's log" >&2
    timeout 60 ssh "${SSH_OPTS[@]}" -p "$P22" debian@127.0.0.1 \
      'cloud-init status --long; sudo tail -20 /run/cloud-init/ds-identify.log' >&2 2>&1 || true
  fi
}

hetzner_check() { # hetzner_check NAME: the instance as the metadata described it (the header's list), over SSH
  local n=$1 app_workers web_stop want name problems=()
  say "$n: metadata requests: $(awk '{print $3}' "$work/metadata/requests.log" | sort | uniq -c | xargs)"
  # the baked app's worker groups (its contract in the image's manifest)
  app_workers=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["app"]["contract"]["workers"]))' \
    "${IMAGE%.qcow2}.manifest.json") || fail "no contract in ${IMAGE%.qcow2}.manifest.json"
  for _ in $(seq 1 30); do ssh "${SSH_OPTS[@]}" -p "$P22" debian@127.0.0.1 true 2>/dev/null && break; sleep 2; done
  ssh "${SSH_OPTS[@]}" -p "$P22" debian@127.0.0.1 true || fail "$n: SSH login as debian with the key the metadata served failed"
  # One SSH session reads everything (each costs seconds of emulated CPU), in sections split here. `sudo -n`:
  # debian's sudo needs no password (there is none). Root's keys must be cloud-init's "log in as debian" stub only
  # (disable_root).
  ssh "${SSH_OPTS[@]}" -p "$P22" debian@127.0.0.1 sudo -n bash -s <<'EOF' >"$work/$n.metadata" || fail "$n: reading the instance over SSH failed"
echo "== user"; echo "$SUDO_USER"
echo "== root-keys"; grep -v '^no-port-forwarding.*command="echo .*Please login as the user \\"debian\\"' /root/.ssh/authorized_keys || true
echo "== hostname"; hostname
echo "== network"; ip -o link show eth0 | grep -o 'link/ether [0-9a-f:]*'; ls /etc/systemd/network/
echo "== cloud-init"; timeout 300 cloud-init status --wait >/dev/null 2>&1; cloud-init status --long; echo "rc $?"
echo "== ds-identify"; grep '^datasource_list' /run/cloud-init/cloud.cfg
echo "== firstboot"; systemctl is-active kiln-firstboot-secrets kiln-firstboot kiln-firstboot-db
echo "== overrides"; stat -c '%a %U' /etc/kiln/overrides.env; cat /etc/kiln/overrides.env
echo "== kiln.env"; sed -n '/^# --- from/,$p' /etc/kiln/kiln.env
# the first boot rendered the app's config with the operator's job timeout (kiln-release configure, by
# kiln-firstboot-late.service once the app answers: its queued or running job waited for, bounded)
for _ in $(seq 240); do systemctl list-jobs --no-legend --plain | grep -q '^[0-9]* *kiln-firstboot-late' || break; sleep 0.5; done
echo "== job-timeout"; grep -h '^stopwaitsecs=' /etc/supervisor/conf.d/kiln-workers.conf 2>/dev/null | sort -u
busctl get-property org.freedesktop.systemd1 /org/freedesktop/systemd1/unit/supervisor_2eservice \
  org.freedesktop.systemd1.Service TimeoutStopUSec | awk '{print "TimeoutStopSec=" $2 / 1000000}'
# ds-identify as it would decide on other machines: the DMI values and file-system labels it reads, faked in a
# scratch directory (its PATH_* variables and its test environment file), the image's /etc/cloud as it is.
echo "== providers"
ds_on() { # ds_on NAME SYS_VENDOR PRODUCT_NAME PRODUCT_UUID LABEL: NAME=the datasource_list, or NAME=disabled
  local d; d=$(mktemp -d)
  mkdir -p "$d/dmi" "$d/run" "$d/lib"
  printf '%s\n' "$2" >"$d/dmi/sys_vendor"; printf '%s\n' "$3" >"$d/dmi/product_name"
  printf '%s\n' "$4" >"$d/dmi/product_uuid"
  printf "DI_BLKID_EXPORT_OUT='DEVNAME=/dev/vda1\nTYPE=ext4\nLABEL=rootfs%b'\n" \
    "${5:+\nDEVNAME=/dev/sr0\nTYPE=iso9660\nLABEL=$5}" >"$d/env"
  if PATH_SYS_CLASS_DMI_ID=$d/dmi PATH_RUN_CI=$d/run PATH_VAR_LIB_CLOUD=$d/lib PATH_DI_ENV=$d/env \
       /usr/lib/cloud-init/ds-identify --force 2>/dev/null; then
    echo "$1=$(sed -n 's/^datasource_list: //p' "$d/run/cloud.cfg")"
  else
    echo "$1=disabled"
  fi
  rm -rf "$d"
}
ds_on digitalocean DigitalOcean Droplet "" config-2
ds_on hetzner Hetzner vServer "" ""
ds_on vultr Vultr VC2 "" ""
ds_on scaleway Scaleway SCW-DEV1-S "" ""
ds_on ovh "OpenStack Foundation" "OpenStack Nova" "" ""
ds_on openstack-configdrive "OpenStack Foundation" "OpenStack Nova" "" config-2
ds_on proxmox-nocloud QEMU "Standard PC (i440FX + PIIX, 1996)" "" cidata
ds_on proxmox-configdrive QEMU "Standard PC (i440FX + PIIX, 1996)" "" config-2
ds_on aws-ec2 "Amazon EC2" t3.micro ec2e1916-9099-7caf-fd21-012345abcdef ""
ds_on none QEMU "Standard PC (i440FX + PIIX, 1996)" "" ""
EOF
  md_section() { awk -v s="== $1" '$0 == s {on=1; next} /^== / {on=0} on' "$work/$n.metadata"; }
  expect() { # expect WHAT GOT WANT
    if [ "$2" = "$3" ]; then say "$n: $1: $2"; else problems+=("$1: got '$2', want '$3'"); fi
  }
  expect "login user (sudo without password)" "$(md_section user)" debian
  expect "root's usable keys" "$(md_section root-keys | wc -l)" 0
  expect hostname "$(md_section hostname)" "$HETZNER_HOST"
  expect "eth0 (served MAC)" "$(md_section network | head -1)" "link/ether $HETZNER_MAC"
  expect "networkd config" "$(md_section network | sed -n 2p)" 10-cloud-init-eth0.network
  expect "cloud-init status" "$(md_section cloud-init | sed -n 's/^status: //p')" "done"
  expect "cloud-init datasource" "$(md_section cloud-init | sed -n 's/^detail: //p')" DataSourceHetzner
  expect "cloud-init errors" "$(md_section cloud-init | sed -n 's/^errors: //p')" "[]"
  expect "cloud-init status rc" "$(md_section cloud-init | sed -n 's/^rc //p')" 0
  expect "ds-identify's choice" "$(md_section ds-identify)" "datasource_list: [ Hetzner, None ]"
  expect "first boot" "$(md_section firstboot | xargs)" "active active active"
  expect "user-data's overrides.env" "$(md_section overrides | xargs)" "600 root LOG_LEVEL=WARNING JOB_TIMEOUT=600"
  expect "kiln.env from the overrides" "$(md_section kiln.env | sed 1d | xargs)" "LOG_LEVEL=WARNING JOB_TIMEOUT=600"
  # the workers' stop wait: 600 + 60 (kiln_app.py's margin); supervisor's in systemd: that, then kiln-web's, + a
  # margin (common.sh). An app without worker groups (the image's manifest) has no workers' wait.
  web_stop=$(bash -c '. "$1/provision/lib/common.sh" && echo $((KILN_WEB_STOPWAITSECS + KILN_STOP_MARGIN))' _ "$repo")
  if [ "$app_workers" -gt 0 ]; then want="stopwaitsecs=660 TimeoutStopSec=$((660 + web_stop))"
  else want="TimeoutStopSec=$web_stop"; fi
  expect "the operator's job timeout in the stop waits" "$(md_section job-timeout | xargs)" "$want"
  while IFS='=' read -r name want; do
    expect "ds-identify on $name" "$(md_section providers | sed -n "s/^$name=//p")" "$want"
  done <<'EOF'
digitalocean=[ ConfigDrive, None ]
hetzner=[ Hetzner, None ]
vultr=[ Vultr, None ]
scaleway=[ Scaleway, None ]
ovh=[ OpenStack, None ]
openstack-configdrive=[ ConfigDrive, None ]
proxmox-nocloud=[ NoCloud, None ]
proxmox-configdrive=[ ConfigDrive, None ]
aws-ec2=[ Ec2, None ]
none=disabled
EOF
  if [ ${#problems[@]} -gt 0 ]; then
    printf '    %s\n' "${problems[@]}" >&2
    sed 's/^/    | /' "$work/$n.metadata" >&2
    fail "$n: ${#problems[@]} Hetzner check(s) failed"
  fi
  say "$n: a Hetzner instance: key for debian, hostname, network, user-data, first boot, ds-identify on every provider"
}
