#!/usr/bin/env bash
# Run the infra suites against the Vagrant VM: host setup, (re)add the baked box if there is one, a venv with the
# test deps, then pytest tests/infra. Extra arguments go to pytest (e.g. -k restart, -x).
#   tests/vagrant/run-infra.sh                     # VM from build/$KILN_DISTRO/*.box, else KILN_BOX / stock box
#   KILN_DESTROY=1 tests/vagrant/run-infra.sh      # destroy the VM afterwards
# Env: KILN_INFRA_VENV [.vagrant/infra-venv, git-ignored] (a venv with pytest, pytest-testinfra, python-vagrant; any venv that has them
#      works, e.g. the repo's .venv once app/requirements-dev.txt carries them), plus the Vagrantfile's KILN_* vars.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
start=$(date +%s)
"$root/tests/vagrant/host-setup.sh"
distro=${KILN_DISTRO:-debian-13}
if [ -z "${KILN_BOX:-}" ] && compgen -G "build/$distro/*.box" >/dev/null; then
  # A VM left from an older box would be tested instead of the new image, and its disk is backed by the box volume
  # that box-add replaces: destroy it first.
  if "$root/tests/vagrant/box-add.sh" --check && [ -f .vagrant/machines/default/libvirt/id ]; then
    echo "run-infra: the box changed: destroying the existing VM" >&2
    vagrant destroy -f >/dev/null
  fi
  "$root/tests/vagrant/box-add.sh"
fi
venv=${KILN_INFRA_VENV:-$root/.vagrant/infra-venv}
if ! "$venv/bin/python" -c 'import testinfra, vagrant, pytest' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pytest pytest-testinfra python-vagrant
fi
rc=0
"$venv/bin/pytest" tests/infra "$@" || rc=$?
echo "run-infra: pytest rc=$rc, $(( $(date +%s) - start ))s in all"
exit "$rc"
