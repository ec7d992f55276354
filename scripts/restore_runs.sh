#!/usr/bin/env bash
# Bring back training outputs kept in git history but not in the tree: runs/ is ignored, and the tree must fit
# what the device tool sends (64 MiB), so a finished stage of a multi-session training is committed once and
# removed from the tree in the next commit. A session on a new machine restores it from the first of the two:
#   scripts/restore_runs.sh <commit> [path ...]     (default path: runs/tb36)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: $0 <commit> [path ...]" >&2
  exit 2
fi
commit=$1
shift
git archive "$commit" "${@:-runs/tb36}" | tar -x -v
