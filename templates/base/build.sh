#!/usr/bin/env bash
# Builds the `base` template's root filesystem into OUT_DIR (which must not exist yet or be empty).
# No network: the only input is a static busybox binary (Debian's busybox-static, /bin/busybox, or
# $BUSYBOX). The builder (runtime/templates/builder.ts) hashes this folder plus that binary
# (manifest "hostInputs") to name the result, so a change here or to busybox gives a new version.
#
# Usage: build.sh OUT_DIR          (as root: files must be owned by root, /home/runbox by 1000:1000)
set -euo pipefail

OUT="${1:?usage: build.sh OUT_DIR}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

die() { echo "templates/base/build.sh: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the rootfs must be owned by root)."
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: install the busybox-static package."
if command -v readelf >/dev/null 2>&1 && readelf -l "$BUSYBOX" 2>/dev/null | grep -q INTERP; then
  die "$BUSYBOX is dynamically linked; the template needs a static one (package busybox-static)."
fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then die "$OUT exists and is not empty."; fi

umask 022
mkdir -p "$OUT"
cd "$OUT"

# Directory skeleton. proc, sys, dev, run are mount points; /.runbox is where the runtime
# bind-mounts the agent binary.
mkdir -p bin sbin usr/bin usr/sbin usr/local/bin usr/local/sbin lib \
  etc root home/runbox tmp var/tmp var/log run proc sys dev mnt opt srv .runbox
chmod 0700 root
chmod 1777 tmp var/tmp

install -m 0755 "$BUSYBOX" bin/busybox

# One symlink per applet, each in the directory busybox itself uses for it (bin/ls, usr/bin/awk,
# sbin/ifconfig, ...). --list-full is in every busybox build that has the installer; plain --list
# (all into bin/) is the fallback.
if applets="$(./bin/busybox --list-full 2>/dev/null)" && [ -n "$applets" ]; then
  :
else
  applets="$(./bin/busybox --list | sed 's|^|bin/|')"
fi
[ -n "$applets" ] || die "$BUSYBOX --list printed nothing."
while IFS= read -r path; do
  [ -n "$path" ] || continue
  [ "$path" = bin/busybox ] && continue
  case "$path" in */*) ;; *) continue ;; esac # e.g. "linuxrc" at the top: not wanted
  [ -e "$path" ] || [ -L "$path" ] && continue
  mkdir -p "$(dirname "$path")"
  ln -s /bin/busybox "$path"
done <<<"$applets"
[ -L bin/sh ] || ln -s /bin/busybox bin/sh

cat >etc/passwd <<'EOF'
root:x:0:0:root:/root:/bin/sh
runbox:x:1000:1000:runbox:/home/runbox:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >etc/group <<'EOF'
root:x:0:
users:x:100:runbox
runbox:x:1000:
nogroup:x:65534:
EOF
cat >etc/shadow <<'EOF'
root:*:19000:0:99999:7:::
runbox:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
chmod 0644 etc/passwd etc/group
chmod 0640 etc/shadow
echo runbox >etc/hostname
cat >etc/hosts <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
: >etc/resolv.conf
cat >etc/nsswitch.conf <<'EOF'
passwd:     files
group:      files
shadow:     files
hosts:      files dns
networks:   files
protocols:  files
services:   files
EOF
cat >etc/profile <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME="${HOME:-/root}"
EOF
ln -s /proc/mounts etc/mtab

chown -R 0:0 .
chown 1000:1000 home/runbox
chmod 0755 home/runbox

# Smoke test without any container machinery: the applet links resolve and sh runs.
[ "$(chroot . /bin/sh -c 'echo ok' 2>/dev/null || true)" = ok ] || die "chroot $OUT /bin/sh -c 'echo ok' failed."
