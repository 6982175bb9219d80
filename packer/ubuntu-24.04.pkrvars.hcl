# Ubuntu 24.04: either the base disk from scripts/build-base-disk.sh (needs archive.ubuntu.com), or the official
# cloud image: scripts/build.sh with BASE_IMAGE_URL=<noble server cloud image (.img, qcow2)> and
# BASE_IMAGE_CHECKSUM=sha256:<hex>.
distro           = "ubuntu-24.04"
base_disk        = "../build/base/ubuntu-24.04.qcow2"
output_directory = "../build/work/ubuntu-24.04/packer"
serial_log       = "../build/work/ubuntu-24.04/serial.log"
manifest_dir     = "../build/work/ubuntu-24.04/manifest"
