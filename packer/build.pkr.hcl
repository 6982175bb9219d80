# The Kiln image: upload provision/ + app/ (+ the build host's extra CA certs), run provision/install.sh, reboot,
# prove every service came back and /readyz answers 200 through nginx, record the package manifest, clean up.

variable "check_units" {
  type        = list(string)
  default     = ["nginx", "mariadb", "redis-server@cache", "redis-server@queue", "supervisor"]
  description = "systemd units that must be active after the reboot."
}

variable "check_programs" {
  type        = list(string)
  default     = ["kiln-web", "kiln-worker"]
  description = "Supervisor programs that must be RUNNING after the reboot."
}

locals {
  # Scripts are run by bash, not executed: provision/ mounts /tmp noexec from the reboot on.
  sudo_exec = "sudo env {{ .Vars }} bash {{ .Path }}"
}

build {
  sources = ["source.qemu.kiln"]

  # Sources live in /var/tmp: the in-build reboot empties /tmp (a tmpfs once the hardening steps ran).
  provisioner "shell" {
    execute_command = local.sudo_exec
    inline = [
      "cloud-init status --wait >/dev/null 2>&1 || cloud-init status --long || true",
      "mkdir -p /var/tmp/kiln/provision /var/tmp/kiln/app /var/tmp/kiln/ca && chown -R ${var.ssh_username} /var/tmp/kiln",
    ]
  }

  provisioner "file" {
    source      = "${var.provision_dir}/"
    destination = "/var/tmp/kiln/provision"
  }

  provisioner "file" {
    source      = "${var.app_dir}/"
    destination = "/var/tmp/kiln/app"
  }

  provisioner "file" {
    source      = "${var.ca_certs_dir}/"
    destination = "/var/tmp/kiln/ca"
  }

  provisioner "shell" {
    execute_command  = local.sudo_exec
    environment_vars = ["KILN_VERSION=${var.kiln_version}", "KILN_COMMIT=${var.kiln_commit}", "DEBIAN_FRONTEND=noninteractive"]
    inline = [
      "set -eu",
      "find /var/tmp/kiln/ca -maxdepth 1 -name '*.crt' -exec install -m 0644 -o root -g root {} /usr/local/share/ca-certificates/ \\;",
      "update-ca-certificates >/dev/null",
      "chown -R root:root /var/tmp/kiln/provision /var/tmp/kiln/app",
      "# Image-build practice: packages do not start their daemons from postinst; provision/ starts what it needs.",
      "printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d",
      "trap 'rm -f /usr/sbin/policy-rc.d' EXIT",
      "echo \"==> provision/install.sh KILN_VERSION=$KILN_VERSION KILN_COMMIT=$KILN_COMMIT\"; t0=$(date +%s)",
      "bash /var/tmp/kiln/provision/install.sh",
      "echo \"<== provision/install.sh done in $(( $(date +%s) - t0 ))s\"",
    ]
  }

  # Services must survive a restart, not only their first start. The script waits for the disconnect: returning
  # at once let Packer run the next step over the still-open connection while the old boot was shutting down.
  provisioner "shell" {
    execute_command   = local.sudo_exec
    inline            = ["echo '==> reboot'; systemctl --no-block reboot; sleep 900; echo 'no reboot within 900 s' >&2; exit 1"]
    expect_disconnect = true
  }

  provisioner "shell" {
    pause_before     = "15s"
    execute_command  = local.sudo_exec
    environment_vars = ["CHECK_UNITS=${join(" ", var.check_units)}", "CHECK_PROGRAMS=${join(" ", var.check_programs)}", "READYZ_TIMEOUT=${var.readyz_timeout}"]
    script           = "scripts/guest-verify.sh"
  }

  provisioner "shell" {
    execute_command = local.sudo_exec
    script          = "scripts/guest-manifest.sh"
  }

  provisioner "file" {
    direction   = "download"
    source      = "/tmp/kiln-manifest.tar"
    destination = "${var.manifest_dir}/guest.tar"
  }

  provisioner "shell" {
    execute_command  = local.sudo_exec
    environment_vars = ["BUILD_USER=${var.ssh_username}"]
    inline = [
      "set -eu",
      "echo '==> provision/cleanup.sh'",
      "bash /var/tmp/kiln/provision/cleanup.sh",
    ]
  }

  provisioner "shell" {
    execute_command  = local.sudo_exec
    environment_vars = ["BUILD_USER=${var.ssh_username}"]
    script           = "scripts/guest-scrub.sh"
  }
}
