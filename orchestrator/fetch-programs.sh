#!/usr/bin/env bash
# Unpacks the third-party programs of the real-program suite (nxd/tests/real_programs.rs) from
# Debian's packages, as a user would get them: `apt-get download` + `dpkg -x`, never installed
# on the host (their maintainer scripts would start services and add users):
#   $NX_PROGRAMS_DIR/<package>/        the package's files (usr/bin/..., etc/..., usr/share/...)
# Default NX_PROGRAMS_DIR: /var/cache/nx/programs. Needs apt and dpkg. Idempotent: a package
# already unpacked is kept. install-deps.sh runs it.
set -euo pipefail
dest=${NX_PROGRAMS_DIR:-/var/cache/nx/programs}
# Programs, then the libraries some of them need that a host does not have (they go into the
# programs' bundles): libsass1 (hugo), liblzf1 and libjemalloc2 (redis-server).
packages=(
  caddy prometheus prometheus-node-exporter prometheus-alertmanager prometheus-pushgateway
  prometheus-postgres-exporter webhook busybox-static hugo redis-tools lighttpd mini-httpd
  victoria-metrics nats-server syncthing webfs rclone docker-registry memcached
  libsass1 liblzf1 libjemalloc2
)
missing=()
for p in "${packages[@]}"; do
  [ -e "$dest/$p/.unpacked" ] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "programs already in $dest"
  exit 0
fi
work=$(mktemp -d /var/tmp/nx-programs.XXXXXX)
trap 'rm -rf "$work"' EXIT
chown _apt "$work" 2>/dev/null || true # apt downloads as its _apt user
(cd "$work" && apt-get download -q "${missing[@]}" >/dev/null)
for p in "${missing[@]}"; do
  deb=$(ls "$work/${p}"_*.deb)
  rm -rf "${dest:?}/$p"
  mkdir -p "$dest/$p"
  dpkg -x "$deb" "$dest/$p"
  basename "$deb" >"$dest/$p/.unpacked"
done
echo "unpacked ${missing[*]} in $dest"
