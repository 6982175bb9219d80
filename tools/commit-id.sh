#!/usr/bin/env bash
# Print the commit id a build records as KILN_COMMIT: `git rev-parse HEAD`, plus "+dirty" when the checkout has
# changes (untracked files count, git-ignored ones such as build/ and .vagrant/ do not); "unknown" without git or
# commits. The one computation for packer/scripts/build.sh (the image's /etc/kiln/release) and the Vagrantfile
# (`vagrant provision`), so provisioning the box from the checkout it was built from leaves the stamp unchanged.
# Usage: tools/commit-id.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! commit=$(git rev-parse --verify -q HEAD 2>/dev/null); then echo unknown; exit 0; fi
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then commit+=+dirty; fi
echo "$commit"
