#!/usr/bin/env bash
# Puts the third-party programs of the real-program suite (nxd/tests/real_programs.rs) where
# its tests find them, as a user would get them: Debian's packages with `apt-get download` +
# `dpkg -x`, never installed on the host (their maintainer scripts would start services and add
# users), and Rust programs from crates.io with `cargo install --locked` (the versions their
# authors locked), built into a directory of their own:
#   $NX_PROGRAMS_DIR/<package>/        the package's files (usr/bin/..., etc/..., usr/share/...)
#   $NX_PROGRAMS_DIR/<crate>/          the crate's installed binaries (bin/...)
# each with a file .unpacked naming what is there. Default NX_PROGRAMS_DIR:
# /var/cache/nx/programs. Needs apt, dpkg and cargo. Idempotent: a program already there is
# kept. install-deps.sh runs it.
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
# Crates (NAME@VERSION): agate (a Gemini server: TLS, its own protocol; ~3 min to build).
crates=(agate@3.3.25)
missing=()
for p in "${packages[@]}"; do
  [ -e "$dest/$p/.unpacked" ] || missing+=("$p")
done
missing_crates=()
for c in "${crates[@]}"; do
  [ -e "$dest/${c%@*}/.unpacked" ] || missing_crates+=("$c")
done
if ((${#missing[@]} + ${#missing_crates[@]} == 0)); then
  echo "programs already in $dest"
  exit 0
fi
work=$(mktemp -d /var/tmp/nx-programs.XXXXXX)
trap 'rm -rf "$work"' EXIT
chown _apt "$work" 2>/dev/null || true # apt downloads as its _apt user
if ((${#missing[@]})); then
  (cd "$work" && apt-get download -q "${missing[@]}" >/dev/null)
fi
for p in "${missing[@]}"; do
  deb=$(ls "$work/${p}"_*.deb)
  rm -rf "${dest:?}/$p"
  mkdir -p "$dest/$p"
  dpkg -x "$deb" "$dest/$p"
  basename "$deb" >"$dest/$p/.unpacked"
done
for c in "${missing_crates[@]}"; do
  rm -rf "${dest:?}/${c%@*}"
  cargo install --quiet --locked --root "$dest/${c%@*}" --target-dir "$work/target" "$c"
  echo "$c from crates.io" >"$dest/${c%@*}/.unpacked"
done
echo "put ${missing[*]} ${missing_crates[*]} in $dest"
