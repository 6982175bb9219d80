# Given to Packer >= 1.7 only (packer/scripts/build.sh copies it in): Packer 1.6.6 rejects required_plugins,
# modern Packer needs it for the qemu builder.
packer {
  required_plugins {
    qemu = {
      version = ">= 1.0.0"
      source  = "github.com/hashicorp/qemu"
    }
  }
}
