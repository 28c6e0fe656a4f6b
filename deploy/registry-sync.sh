#!/bin/sh
# Keeps a clone of the project following its git remote, so `shelf serve --model prod` in the
# same pod sees every promotion and rollback (it re-reads the tags every --poll seconds).
#   registry-sync clone   clone $MODELSHELF_REPO into $MODELSHELF_DIR unless it is there
#   registry-sync follow  fetch the tags every $MODELSHELF_SYNC_SECONDS (default 30), forever
#   registry-sync once    fetch them once
# A private remote over HTTPS takes $GIT_TOKEN (from a Secret) through a credential helper,
# so the token is in neither the URL nor .git/config.
set -eu

dir=${MODELSHELF_DIR:-/srv/project}
every=${MODELSHELF_SYNC_SECONDS:-30}

git_() {
  if [ -n "${GIT_TOKEN:-}" ]; then
    # shellcheck disable=SC2016  # expanded by git's shell, from the environment, not here
    git -c credential.helper='!f() { echo username=x-access-token; echo "password=$GIT_TOKEN"; }; f' "$@"
  else
    git "$@"
  fi
}

fetch() {
  # Tags are moved and deleted on the remote (GTO's deprecations, a deleted release): force
  # and prune them. Explicit refspecs: git ignores --prune-tags beside --tags.
  git_ -C "$dir" fetch --quiet --prune origin \
    "+refs/heads/*:refs/remotes/origin/*" "+refs/tags/*:refs/tags/*"
}

case "${1:-}" in
  clone)
    if [ -d "$dir/.git" ]; then
      fetch
    else
      : "${MODELSHELF_REPO:?set MODELSHELF_REPO to the git URL of the project}"
      git_ clone --quiet --no-tags "$MODELSHELF_REPO" "$dir"
      fetch
    fi
    ;;
  once)
    fetch
    ;;
  follow)
    while :; do
      fetch || echo "registry-sync: fetch failed; serving on with the tags already here" >&2
      sleep "$every"
    done
    ;;
  *)
    echo "usage: registry-sync clone|once|follow" >&2
    exit 2
    ;;
esac
