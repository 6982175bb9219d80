# Inputs of the Kiln image build. packer/scripts/build.sh sets the machine-specific ones; one <distro>.pkrvars.hcl per
# target sets the distro ones. Works with Debian's Packer 1.6.6 and with modern Packer (plugins/plugins.pkr.hcl).

packer {
  required_version = ">= 1.6.6"
}

variable "distro" {
  type        = string
  description = "Target id, e.g. debian-13 or ubuntu-24.04 (matches provision/distro/<id>.sh)."
}

variable "base_disk" {
  type        = string
  default     = "../build/base/debian-13.qcow2"
  description = "The build VM's disk (qcow2): scripts/build.sh's copy of the base disk with this build's user and key."
}

variable "base_disk_checksum" {
  type        = string
  default     = "none"
  description = "Checksum of base_disk (scripts/build.sh passes sha256:<hex>)."
}

variable "accelerator" {
  type        = string
  default     = "tcg"
  description = "QEMU accelerator: kvm, tcg (scripts/kvm-probe.sh decides)."
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory" {
  type    = number
  default = 2048
}

variable "disk_size" {
  type        = string
  default     = "4G"
  description = "Virtual size of the image; cloud-init grows the root partition at boot."
}

variable "output_directory" {
  type    = string
  default = "../build/work/debian-13/packer"
}

variable "vm_name" {
  type    = string
  default = "kiln.qcow2"
}

variable "ssh_username" {
  type        = string
  default     = "kilnbuild"
  description = "Throw-away build user made by the NoCloud seed and deleted before the snapshot."
}

variable "ssh_private_key_file" {
  type        = string
  default     = ""
  description = "Throw-away private key made per build by scripts/build.sh (its public half is in the seed's user-data). Empty: SSH agent (validate only)."
}

variable "ssh_timeout" {
  type    = string
  default = "20m"
}

variable "serial_log" {
  type        = string
  default     = "../build/work/debian-13/serial.log"
  description = "The build VM's serial console, for diagnosing a boot that never reaches SSH."
}

variable "provision_dir" {
  type        = string
  default     = "../provision"
  description = "Provisioner tree (provision/install.sh, provision/cleanup.sh)."
}

variable "app_dir" {
  type    = string
  default = "../app"
}

variable "wheelhouse_dir" {
  type        = string
  default     = "../build/cache/debian-13-wheelhouse"
  description = "The app's wheels for the target's Python (scripts/build-wheelhouse.sh); installed offline in the guest."
}

variable "ca_certs_dir" {
  type        = string
  default     = "/usr/local/share/ca-certificates"
  description = "Extra CA certificates the guest trusts during the build only (an intercepting proxy's)."
}

variable "manifest_dir" {
  type        = string
  default     = "../build/work/debian-13/manifest"
  description = "Where the guest's package lists (dpkg, pip freeze, kernel) are downloaded."
}

variable "kiln_version" {
  type    = string
  default = "0.0.0"
}

variable "kiln_commit" {
  type    = string
  default = "unknown"
}

variable "readyz_timeout" {
  type        = number
  default     = 600
  description = "Seconds the post-provision check waits for services and kiln-ready (the app's health path through nginx)."
}
