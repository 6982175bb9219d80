# One QEMU source for every distro: it boots a copy of the base disk (never an installer ISO) into which
# scripts/build.sh wrote this build's throw-away user and key; cloud-init stays off for the build VM only.

source "qemu" "kiln" {
  disk_image       = true
  iso_url          = var.base_disk
  iso_checksum     = var.base_disk_checksum
  use_backing_file = false

  accelerator = var.accelerator
  cpus        = var.cpus
  memory      = var.memory
  # One socket of var.cpus cores (Packer's own -smp is a socket per CPU): on more than one socket of this CPU model
  # the guest kernel finds its TSCs "unsynchronized" and falls back to the HPET clocksource, and under TCG every clock
  # read is then a system call and an emulated device access.
  qemuargs = [
    ["-cpu", "max"],
    ["-smp", "cpus=${var.cpus},sockets=1,cores=${var.cpus},threads=1"],
    ["-serial", "file:${var.serial_log}"],
  ]
  headless       = true
  net_device     = "virtio-net"
  disk_interface = "virtio"
  disk_size      = var.disk_size

  # The build VM is thrown away: no host flushes for its disk. Packer only hands over the raw result (no compaction
  # pass, no compression): scripts/build.sh compresses it once, with all host cores.
  disk_cache         = "unsafe"
  skip_compaction    = true
  format             = "qcow2"
  disk_compression   = false
  disk_discard       = "unmap"
  disk_detect_zeroes = "unmap"
  output_directory   = var.output_directory
  vm_name            = var.vm_name

  communicator = "ssh"
  # Not Packer's default 2222-4444, which holds MariaDB's 3306: in `make test` the nspawn tier's container, on the
  # host's network, starts MariaDB while this build runs.
  host_port_min        = 2222
  host_port_max        = 2999
  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_agent_auth       = var.ssh_private_key_file == ""
  ssh_timeout          = var.ssh_timeout
  # The build user is removed as the very last act, in the same root shell that powers the VM off.
  shutdown_command = "sudo sh -c 'userdel -rf ${var.ssh_username} >/dev/null 2>&1; rm -f /etc/sudoers.d/90-kiln-build; sync; shutdown -P now'"
  shutdown_timeout = "5m"
}
