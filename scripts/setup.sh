#!/usr/bin/env bash
# Idempotent host setup, run first by `npm start` and `npm test` (prestart/pretest).
# Prints one line per step it actually performs; a run with nothing to do is quiet and fast (cheap
# checks only: dpkg-query, command -v, stamp files and mtimes) and needs no network.
# Fails loudly, saying what failed and what to do.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE_DIR="${RUNBOX_STATE_DIR:-/var/lib/runbox}"

log() { echo "setup: $*"; }
warn() { echo "setup: warning: $*" >&2; }
die() {
  echo "setup: ERROR: $1" >&2
  shift
  for line in "$@"; do echo "setup:   $line" >&2; done
  exit 1
}

# ---- a. root ------------------------------------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
  die "runbox setup must run as root (it installs packages, and VPSs need namespaces, cgroups and mounts)." \
    "Run it as root, e.g. 'sudo npm test' or 'sudo bash scripts/setup.sh'."
fi

# One setup at a time (npm start and npm test may race).
if command -v flock >/dev/null 2>&1; then
  mkdir -p /run/lock
  exec 9>/run/lock/runbox-setup.lock
  flock 9
fi

# ---- b. Debian packages -------------------------------------------------------------------------
# openssl: each worker makes its migration-channel certificate with it (worker/migration/credentials.ts).
# strace: a test checks that the CRIU wrapper never moves its own stdio (test/integration/criu-wrapper.test.ts).
PACKAGES=(runc iproute2 nftables iptables redis-server busybox-static gcc libc6-dev make e2fsprogs
  util-linux procps psmisc kmod ca-certificates debootstrap umoci skopeo openssl strace)
installed="$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)"
missing=()
for p in "${PACKAGES[@]}"; do
  grep -qE "^$p ii" <<<"$installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  aptlog="$(mktemp)"
  if ! apt-get update -q >"$aptlog" 2>&1; then
    cat "$aptlog" >&2
    rm -f "$aptlog"
    die "apt-get update failed (output above)." "Check the network and /etc/apt/sources.list*, then rerun scripts/setup.sh."
  fi
  # The redis-server package may start its own service; runbox starts its own redis and leaves it be.
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$aptlog" 2>&1; then
    cat "$aptlog" >&2
    rm -f "$aptlog"
    die "apt-get install ${missing[*]} failed (output above)." "Fix the apt problem shown, then rerun scripts/setup.sh."
  fi
  rm -f "$aptlog"
fi

# ---- c. CRIU >= 4.2 (private prefix when the system one is older) -----------------------------------
bash "$ROOT/scripts/install-criu.sh"

# ---- c2. hybrid cgroups for crun ------------------------------------------------------------------
# crun refuses the hybrid layout while any controller sits on its cgroup2 mount ("cgroups in hybrid
# mode not supported, drop all controllers from cgroupv2"); on these VMs only hugetlb does, and
# nothing uses it there. Such controllers are mounted as v1 hierarchies, once per boot, and only
# while no cgroup below the cgroup2 root holds a process: changing the layout under running VPSs
# breaks their checkpoints (docs/runtime-evaluation.md). When it cannot be done, runbox uses runc
# (RUNBOX_RUNTIME=auto); pure cgroup v2 and pure v1 hosts need nothing.
UNIFIED=/sys/fs/cgroup/unified
if [ -x "${RUNBOX_CRIU_PREFIX:-/opt/runbox/criu}/bin/crun" ] && [ "$(stat -f -c %T "$UNIFIED" 2>/dev/null || true)" = cgroup2fs ] &&
  [ -n "$(cat "$UNIFIED/cgroup.controllers" 2>/dev/null || true)" ]; then
  busy=""
  while IFS= read -r procs; do
    if [ -n "$(head -c1 "$procs" 2>/dev/null || true)" ]; then busy="${procs%/cgroup.procs}"; break; fi
  done < <(find "$UNIFIED" -mindepth 2 -name cgroup.procs 2>/dev/null)
  if [ -n "$busy" ]; then
    warn "cgroup $busy has processes: the cgroup2 controllers ($(cat "$UNIFIED/cgroup.controllers")) stay where they are and runbox uses runc, not crun"
  else
    for ctrl in $(cat "$UNIFIED/cgroup.controllers"); do
      if mkdir -p "/sys/fs/cgroup/$ctrl" 2>/dev/null && mount -t cgroup -o "$ctrl" cgroup "/sys/fs/cgroup/$ctrl" 2>/dev/null; then
        log "cgroup controller $ctrl moved from cgroup2 to a v1 hierarchy at /sys/fs/cgroup/$ctrl (crun needs hybrid hosts without cgroup2 controllers)"
      else
        rmdir "/sys/fs/cgroup/$ctrl" 2>/dev/null || true
        warn "could not mount the $ctrl controller as a v1 hierarchy: runbox uses runc, not crun"
        break
      fi
    done
  fi
fi

# ---- d. npm dependencies ------------------------------------------------------------------------
if [ ! -d node_modules ] || [ ! -e node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund || die "npm ci failed (output above)." "Fix the problem shown (network, lockfile), then rerun scripts/setup.sh."
fi

mkdir -p build

# ---- e. the in-VPS agent (static C binary) --------------------------------------------------------
AGENT_SRC=runtime/agent/agent.c
AGENT_BIN=build/runbox-agent
if [ ! -e "$AGENT_SRC" ]; then
  die "$AGENT_SRC is missing." "It is part of the repository: restore it, then rerun scripts/setup.sh."
elif [ ! -e "$AGENT_BIN" ] || [ "$AGENT_SRC" -nt "$AGENT_BIN" ]; then
  log "compiling $AGENT_BIN"
  gcc -static -O2 -Wall -Wextra -Werror -o "$AGENT_BIN.tmp" "$AGENT_SRC" ||
    { rm -f "$AGENT_BIN.tmp"; die "compiling $AGENT_SRC failed (errors above)."; }
  mv -f "$AGENT_BIN.tmp" "$AGENT_BIN"
fi

# The helper that caps a VPS's per-user-namespace counts (runtime/userns/userns-limits.c).
LIMITS_SRC=runtime/userns/userns-limits.c
LIMITS_BIN=build/runbox-userns-limits
if [ ! -e "$LIMITS_BIN" ] || [ "$LIMITS_SRC" -nt "$LIMITS_BIN" ]; then
  log "compiling $LIMITS_BIN"
  gcc -static -O2 -Wall -Wextra -Werror -o "$LIMITS_BIN.tmp" "$LIMITS_SRC" ||
    { rm -f "$LIMITS_BIN.tmp"; die "compiling $LIMITS_SRC failed (errors above)."; }
  mv -f "$LIMITS_BIN.tmp" "$LIMITS_BIN"
fi

# ---- f. N-API addons: pipe.node (real pipes for container stdio), sys.node (mounts, loop devices,
#         netns, freeze: the syscalls a VPS's life needs, made in-process) -----------------------------
node_include_dir() {
  local inc
  inc="$(node -p 'process.execPath.replace(/bin\/node$/, "include/node")')"
  if [ ! -e "$inc/node_api.h" ]; then # npm's nodedir setting, then node-gyp's header cache
    local nodedir cand
    nodedir="$(npm config get nodedir 2>/dev/null || true)"
    for cand in "$nodedir/include/node" "${HOME:-/root}/.cache/node-gyp/$(node -p 'process.versions.node')/include/node"; do
      if [ -e "$cand/node_api.h" ]; then inc="$cand"; break; fi
    done
  fi
  [ -e "$inc/node_api.h" ] || die "Node's C headers (node_api.h) were not found." \
    "Install Node's headers (the nodejs package ships /usr/include/node) or run 'npx node-gyp install', then rerun."
  echo "$inc"
}
for addon in pipe sys; do
  src="runtime/native/$addon.c"
  bin="build/$addon.node"
  if [ ! -e "$bin" ] || [ "$src" -nt "$bin" ]; then
    log "compiling $bin"
    node_inc="$(node_include_dir)"
    gcc -shared -fPIC -O2 -Wall -Wextra -I"$node_inc" -o "$bin.tmp" "$src" -lpthread ||
      { rm -f "$bin.tmp"; die "compiling $src failed (errors above)."; }
    mv -f "$bin.tmp" "$bin"
  fi
done

# ---- g. TypeScript ------------------------------------------------------------------------------
TS_DIRS=()
for d in core runtime worker api cli bench test; do [ -d "$d" ] && TS_DIRS+=("$d"); done
if [ "${#TS_DIRS[@]}" -gt 0 ] && [ -n "$(find "${TS_DIRS[@]}" -name '*.ts' -print -quit)" ]; then
  need_build=0
  if [ ! -e dist/.tsbuildinfo ] || [ tsconfig.json -nt dist/.tsbuildinfo ] || [ package-lock.json -nt dist/.tsbuildinfo ]; then
    need_build=1
  # A newer .ts file, or a newer directory (a file was added, removed or renamed there).
  elif [ -n "$(find "${TS_DIRS[@]}" \( -name '*.ts' -o -type d \) -newer dist/.tsbuildinfo -print -quit)" ]; then
    need_build=1
  # The last build (maybe a manual `npm run build`) recorded errors (diagnostic category 1).
  elif grep -q '"category":1' dist/.tsbuildinfo; then
    need_build=1
  fi
  if [ "$need_build" -eq 1 ]; then
    log "compiling TypeScript (npm run build)"
    if ! npm run --silent build; then
      # tsc writes its build info even when it reports errors; drop it so the next run retries.
      rm -f dist/.tsbuildinfo
      die "TypeScript build failed (errors above)." "Fix the errors, then rerun (npm run build to check)."
    fi
    touch dist/.tsbuildinfo # tsc leaves it untouched when nothing changed
  fi
fi

# ---- h. the `base` template ---------------------------------------------------------------------
# Built by the TypeScript builder (runtime/templates/builder.ts), the same code as
# `runbox templates build` and the worker's on-demand builds. Content-addressed: when the recipe and
# busybox are unchanged this only hashes the recipe folder (a fraction of a second) and prints
# nothing (--quiet). Other templates are built by `runbox templates build NAME`, by `runbox up`
# (RUNBOX_PREBUILD_TEMPLATES) or on demand by the worker.
[ -x /bin/busybox ] || die "/bin/busybox is missing." "Install the busybox-static package (apt-get install busybox-static)."
if ! node dist/cli/main.js templates build base --quiet; then
  die "building template base failed (errors above)." "Fix the problem shown, then rerun scripts/setup.sh ('./bin/runbox templates build base' shows the progress)."
fi
