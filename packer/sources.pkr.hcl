# One QEMU source for every distro: it boots a cloud-init disk image (never an installer ISO) and seeds it through
# Packer's HTTP server (NoCloud via SMBIOS serial), so no seed ISO tool is needed on the host.

source "qemu" "kiln" {
  disk_image       = true
  iso_url          = var.base_image_url != "" ? var.base_image_url : var.base_disk
  iso_checksum     = var.base_image_url != "" ? var.base_image_checksum : var.base_disk_checksum
  use_backing_file = false

  accelerator = var.accelerator
  cpus        = var.cpus
  memory      = var.memory
  qemuargs = [
    ["-cpu", "max"],
    ["-smbios", "type=1,serial=ds=nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/"],
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

  http_directory = var.http_directory

  communicator         = "ssh"
  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_agent_auth       = var.ssh_private_key_file == ""
  ssh_timeout          = var.ssh_timeout
  # The build user is removed as the very last act, in the same root shell that powers the VM off.
  shutdown_command = "sudo sh -c 'userdel -rf ${var.ssh_username} >/dev/null 2>&1; rm -f /etc/sudoers.d/90-cloud-init-users; sync; shutdown -P now'"
  shutdown_timeout = "5m"
}
