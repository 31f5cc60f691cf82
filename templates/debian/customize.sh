#!/bin/sh
# Runs as root inside the new Debian rootfs (chroot, /proc /sys /dev mounted), after debootstrap.
set -eu

# The unprivileged user jobs may run as (uid/gid 1000, like in the base template).
if ! id runbox >/dev/null 2>&1; then
  useradd --create-home --uid 1000 --user-group --shell /bin/bash --comment runbox runbox
fi
chmod 0755 /home/runbox

# Containers have no init system: a package must not try to start a service when installed inside a
# VPS. (The build itself uses a temporary policy-rc.d the same way.)
printf '#!/bin/sh\n# runbox: no init system in a VPS; do not start services on install.\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d

# apt in a VPS: no recommends by default (smaller installs, like the build), no interactive prompts.
cat >/etc/apt/apt.conf.d/90runbox <<'CONF'
// runbox: lean installs inside VPSs.
APT::Install-Recommends "false";
APT::Install-Suggests "false";
CONF
