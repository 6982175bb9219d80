# The Kiln image: upload provision/ + app/ + the app's wheelhouse (+ the build host's extra CA certs), run
# provision/install.sh, prove every service runs and kiln-ready says ready (database, Redis, the app's health path
# through nginx), record the package manifest,
# clean up. No reboot inside the build: tests/image/boot-check.sh boots the finished image (twice, as a cloud would)
# and the infra reboot suite reboots the Vagrant VM; a reboot here cost a full emulated shutdown and boot.

variable "check_units" {
  type        = list(string)
  default     = []
  description = "systemd units that must be active once provisioned, besides those kiln status requires (nginx, the distro profile's database unit, both Redis instances, supervisor, first boot): the distro's names come from its profile, not from here."
}

variable "check_programs" {
  type        = list(string)
  default     = []
  description = "Supervisor programs that must be RUNNING once provisioned; empty: kiln-web, and kiln-worker when the app's contract has worker groups."
}

locals {
  # Scripts are run by bash, not executed: provision/ mounts /tmp noexec.
  sudo_exec = "sudo env {{ .Vars }} bash {{ .Path }}"
}

build {
  sources = ["source.qemu.kiln"]

  # Sources live in /var/tmp: /tmp is a tmpfs from the image's first boot on (step 83), and noexec.
  provisioner "shell" {
    execute_command = local.sudo_exec
    inline = [
      "mkdir -p /var/tmp/kiln/provision /var/tmp/kiln/app /var/tmp/kiln/wheelhouse /var/tmp/kiln/ca && chown -R ${var.ssh_username} /var/tmp/kiln",
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
    source      = "${var.wheelhouse_dir}/"
    destination = "/var/tmp/kiln/wheelhouse"
  }

  provisioner "file" {
    source      = "${var.ca_certs_dir}/"
    destination = "/var/tmp/kiln/ca"
  }

  provisioner "shell" {
    execute_command = local.sudo_exec
    # KILN_BUILD_CA_DIR: install.sh trusts the build host's CAs (an intercepting proxy's) for its own run only.
    environment_vars = ["KILN_VERSION=${var.kiln_version}", "KILN_COMMIT=${var.kiln_commit}", "KILN_WHEELHOUSE=/var/tmp/kiln/wheelhouse", "KILN_BUILD_CA_DIR=/var/tmp/kiln/ca", "DEBIAN_FRONTEND=noninteractive"]
    inline = [
      "set -eu",
      "chown -R root:root /var/tmp/kiln/provision /var/tmp/kiln/app /var/tmp/kiln/wheelhouse",
      "# Image-build practice: packages do not start their daemons from postinst; provision/ starts what it needs.",
      "# dpkg skips its fsyncs for the throw-away build VM (the image is synced and trimmed before the snapshot).",
      "printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d",
      "echo force-unsafe-io >/etc/dpkg/dpkg.cfg.d/kiln-build-unsafe-io",
      "trap 'rm -f /usr/sbin/policy-rc.d /etc/dpkg/dpkg.cfg.d/kiln-build-unsafe-io' EXIT",
      "echo \"==> provision/install.sh KILN_VERSION=$KILN_VERSION KILN_COMMIT=$KILN_COMMIT\"; t0=$(date +%s)",
      "bash /var/tmp/kiln/provision/install.sh",
      "echo \"<== provision/install.sh done in $(( $(date +%s) - t0 ))s\"",
      "# AppArmor compiles its profiles at its first start, which is on the boot's critical path (before sysinit.target):",
      "# compile them once here, into its cache in the image (this VM boots the image's own kernel).",
      "if systemctl is-enabled -q apparmor.service; then systemctl start apparmor.service; fi",
    ]
  }

  provisioner "shell" {
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
