// sys.node: the host-side syscalls a VPS's life needs, made in the worker's own process.
//
// Why: the engine ran a helper process for each of these (cp, mount -o loop, mount -t overlay,
// umount, ip netns add/del, fsfreeze): ~6 ms of wall time and ~1.5-5 ms of CPU each just to fork
// and exec from a Node process (more as its RSS grows), plus the program's own start-up, for a
// syscall or two of real work. Here each call is one async N-API work item: the syscalls run on
// libuv's thread pool (mount and umount can block on I/O), the promise settles on the loop.
//
// Every function rejects with an Error shaped like Node's own (code "ENOENT"..., errno, syscall,
// path), and undoes what it did before failing: no loop device, netns file or mount is left.
//
// Built by scripts/setup.sh:
//   gcc -shared -fPIC -O2 -I<node include dir> -o build/sys.node runtime/native/sys.c -lpthread
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <net/if.h>
#include <node_api.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <uv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/filter.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <stdint.h>
#include <unistd.h>

#ifndef PTRACE_SECCOMP_GET_FILTER
#define PTRACE_SECCOMP_GET_FILTER 0x420c
#endif

enum op_kind { OP_MOUNT, OP_MOUNT_LOOP, OP_UMOUNT, OP_COPY_SPARSE, OP_FREEZE, OP_THAW, OP_NETNS_ADD, OP_NETNS_DEL, OP_SECCOMP_FILTER, OP_IDMAP_MOUNT, OP_MOUNT_AS };

#define MAX_ARGS 5

struct op {
  enum op_kind kind;
  char *s[MAX_ARGS];    // string arguments (owned)
  unsigned long flags;  // mount/umount flags
  int option;           // mount_loop: read-only; netns_add: bring lo up
  // result
  int err;              // errno of the failed syscall, 0 on success
  const char *syscall;  // its name
  const char *err_path; // the path it was about (points into s[])
  char out[64];         // mount_loop: the loop device used
  double bytes;         // copy_sparse: bytes copied
  int pid;              // seccomp_filter: the process
  void *buf;            // seccomp_filter: the program (owned)
  size_t len;           //   its size in bytes
  napi_deferred deferred;
  napi_async_work work;
};

static void op_free(struct op *o) {
  for (int i = 0; i < MAX_ARGS; i++) free(o->s[i]);
  free(o->buf);
  free(o);
}

static int fail(struct op *o, const char *syscall, const char *path) {
  o->err = errno ? errno : EIO;
  o->syscall = syscall;
  o->err_path = path;
  return -1;
}

// ---- loop devices --------------------------------------------------------------------------------

// Attaches `image` to a free loop device with autoclear (the device detaches itself when the last
// user, the mount, goes away: as `mount -o loop` does) and mounts it. Another process may take
// the free device between LOOP_CTL_GET_FREE and LOOP_CONFIGURE (EBUSY): then the next one is tried.
static void do_mount_loop(struct op *o) {
  const char *image = o->s[0], *target = o->s[1], *fstype = o->s[2], *data = o->s[3];
  int ro = o->option;
  int file = open(image, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOFOLLOW);
  if (file < 0) { fail(o, "open", image); return; }
  int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) { fail(o, "open", "/dev/loop-control"); close(file); return; }
  int dev = -1;
  for (int attempt = 0; attempt < 64 && dev < 0; attempt++) {
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0) { fail(o, "ioctl(LOOP_CTL_GET_FREE)", "/dev/loop-control"); break; }
    snprintf(o->out, sizeof o->out, "/dev/loop%d", n);
    int fd = open(o->out, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) continue; // udev-less hosts: the node appears a moment later
      fail(o, "open", o->out);
      break;
    }
    struct loop_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.fd = (unsigned)file;
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | (ro ? LO_FLAGS_READ_ONLY : 0);
    // The kernel keeps the first 63 bytes of the name (losetup shows the full path from sysfs).
    strncpy((char *)cfg.info.lo_file_name, image, LO_NAME_SIZE - 1);
    if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) { dev = fd; break; }
    int e = errno;
    close(fd);
    if (e != EBUSY) { errno = e; fail(o, "ioctl(LOOP_CONFIGURE)", o->out); break; }
  }
  close(ctl);
  close(file);
  if (dev < 0) {
    if (!o->err) { errno = EBUSY; fail(o, "ioctl(LOOP_CONFIGURE)", image); }
    return;
  }
  if (mount(o->out, target, fstype, o->flags | (ro ? MS_RDONLY : 0), data[0] ? data : NULL) != 0) {
    fail(o, "mount", target);
    ioctl(dev, LOOP_CLR_FD, 0); // not mounted: detach now (autoclear would on close anyway)
  }
  close(dev); // mounted: the mount holds the device; autoclear detaches it at the unmount
}

// ---- copies --------------------------------------------------------------------------------------

// Copies only the data extents of `src` (SEEK_DATA/SEEK_HOLE) into a new file of the same size:
// holes stay holes, as `cp --sparse=always` of a freshly made image keeps them.
static void do_copy_sparse(struct op *o) {
  const char *src = o->s[0], *dst = o->s[1];
  int in = open(src, O_RDONLY | O_CLOEXEC);
  if (in < 0) { fail(o, "open", src); return; }
  struct stat st;
  if (fstat(in, &st) != 0) { fail(o, "fstat", src); close(in); return; }
  if (!S_ISREG(st.st_mode)) { errno = EINVAL; fail(o, "fstat", src); close(in); return; }
  int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (out < 0) { fail(o, "open", dst); close(in); return; }
  int ok = ftruncate(out, st.st_size) == 0 ? 1 : (fail(o, "ftruncate", dst), 0);
  off_t pos = 0;
  while (ok && pos < st.st_size) {
    off_t data = lseek(in, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break; // only a hole left
      ok = 0; fail(o, "lseek", src); break;
    }
    off_t hole = lseek(in, data, SEEK_HOLE);
    if (hole < 0) { ok = 0; fail(o, "lseek", src); break; }
    loff_t r = data, w = data;
    while (r < hole) {
      ssize_t n = copy_file_range(in, &r, out, &w, (size_t)(hole - r), 0);
      if (n < 0) { ok = 0; fail(o, "copy_file_range", dst); break; }
      if (n == 0) { errno = EIO; ok = 0; fail(o, "copy_file_range", src); break; } // src shrank
      o->bytes += (double)n;
    }
    pos = hole;
  }
  close(in);
  if (close(out) != 0 && ok) { ok = 0; fail(o, "close", dst); }
  if (!ok) unlink(dst);
}

// ---- file system freeze --------------------------------------------------------------------------

static void do_freeze(struct op *o, int freeze) {
  int fd = open(o->s[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) { fail(o, "open", o->s[0]); return; }
  if (ioctl(fd, freeze ? FIFREEZE : FITHAW, 0) != 0) fail(o, freeze ? "ioctl(FIFREEZE)" : "ioctl(FITHAW)", o->s[0]);
  close(fd);
}

// ---- network namespaces --------------------------------------------------------------------------

// `ip netns add`'s layout: <run dir> is a shared mount (so the netns mounts under it propagate to
// mount namespaces made later, such as a container's), and each netns is a file bind-mounted from
// a thread's /proc/thread-self/ns/net. The unshare happens in a thread made for it, which then
// ends: no thread of the process (the event loop, the pool running DNS lookups) ever changes netns.
static int make_run_dir_shared(struct op *o, const char *dir) {
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) return fail(o, "mkdir", dir);
  if (mount("", dir, "none", MS_SHARED | MS_REC, NULL) == 0) return 0;
  if (errno != EINVAL) return fail(o, "mount", dir);
  // Not a mount point yet: bind it onto itself, then make it shared.
  if (mount(dir, dir, "none", MS_BIND | MS_REC, NULL) != 0) return fail(o, "mount", dir);
  if (mount("", dir, "none", MS_SHARED | MS_REC, NULL) != 0) return fail(o, "mount", dir);
  return 0;
}

static int loopback_up(struct op *o) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return fail(o, "socket", "lo");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
  if (rc == 0) {
    ifr.ifr_flags |= IFF_UP;
    rc = ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  if (rc != 0) fail(o, "ioctl(SIOCSIFFLAGS)", "lo");
  close(s);
  return rc;
}

static void *netns_thread(void *arg) {
  struct op *o = arg;
  const char *file = o->s[1];
  if (unshare(CLONE_NEWNET) != 0) { fail(o, "unshare", file); return NULL; }
  if (o->option && loopback_up(o) != 0) return NULL;
  char self[64];
  snprintf(self, sizeof self, "/proc/self/task/%ld/ns/net", (long)syscall(SYS_gettid));
  if (mount(self, file, "none", MS_BIND, NULL) != 0) fail(o, "mount", file);
  return NULL;
}

static void do_netns_add(struct op *o) {
  const char *dir = o->s[0], *file = o->s[1];
  if (make_run_dir_shared(o, dir) != 0) return;
  int fd = open(file, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
  if (fd < 0) { fail(o, "open", file); return; }
  close(fd);
  pthread_t t;
  int e = pthread_create(&t, NULL, netns_thread, o);
  if (e != 0) { errno = e; fail(o, "pthread_create", file); }
  else pthread_join(t, NULL);
  if (o->err) unlink(file);
}

static void do_netns_del(struct op *o) {
  const char *file = o->s[0];
  // As `ip netns del`: detach (a process may still hold it open; the netns lives on until it lets
  // go), then remove the file. An unmounted leftover file is removed all the same.
  if (umount2(file, MNT_DETACH) != 0 && errno != EINVAL) { fail(o, "umount2", file); return; }
  if (unlink(file) != 0) fail(o, "unlink", file);
}

// ---- seccomp -----------------------------------------------------------------------------------

// The seccomp filter (classic BPF) a process runs under, as the kernel holds it: stops the process
// with PTRACE_SEIZE + PTRACE_INTERRUPT, reads filter 0 with PTRACE_SECCOMP_GET_FILTER (the one
// CRIU uses to dump filters), detaches. Exactly one filter is expected: E2BIG when the process has
// more (a stack of filters is not one program), EINVAL (the kernel's answer) when it has none.
// Needs CAP_SYS_ADMIN.
// All ptrace calls come from this one thread: a tracee belongs to the thread that seized it.
static void do_seccomp_filter(struct op *o) {
  pid_t pid = o->pid;
  if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0) { fail(o, "ptrace(PTRACE_SEIZE)", NULL); return; }
  int status;
  if (ptrace(PTRACE_INTERRUPT, pid, 0, 0) != 0 || waitpid(pid, &status, __WALL) != pid) {
    fail(o, "ptrace(PTRACE_INTERRUPT)", NULL);
    ptrace(PTRACE_DETACH, pid, 0, 0);
    return;
  }
  long n = ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 0, NULL);
  if (n < 0) {
    fail(o, "ptrace(PTRACE_SECCOMP_GET_FILTER)", NULL);
  } else if (n == 0 || n > BPF_MAXINSNS) {
    errno = EINVAL;
    fail(o, "ptrace(PTRACE_SECCOMP_GET_FILTER)", NULL);
  } else {
    o->len = (size_t)n * sizeof(struct sock_filter);
    o->buf = malloc(o->len);
    if (ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 0, o->buf) != n) fail(o, "ptrace(PTRACE_SECCOMP_GET_FILTER)", NULL);
    else if (ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 1, NULL) >= 0) { errno = E2BIG; fail(o, "ptrace(PTRACE_SECCOMP_GET_FILTER)", NULL); }
    else if (errno != ENOENT) fail(o, "ptrace(PTRACE_SECCOMP_GET_FILTER)", NULL);
  }
  ptrace(PTRACE_DETACH, pid, 0, 0);
}


// ---- idmapped mounts -----------------------------------------------------------------------------

// A VPS in a user namespace sees its template and its disk through idmapped mounts: files owned by
// uid 0 there appear owned by the VPS's root (host uid BASE), so one template (and a disk image
// that moves between hosts) serves every VPS whatever its id range. The mapping comes from a user
// namespace made for the purpose: a child cloned into a new userns (sharing this process's memory:
// no copy of the page tables; it only waits on a pipe), its uid_map and gid_map written from here,
// its ns file opened, the child let go. Then open_tree(OPEN_TREE_CLONE) makes a detached copy of
// `source`, mount_setattr(MOUNT_ATTR_IDMAP) maps it, move_mount attaches it at `target`.
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
struct rb_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };

static int userns_child(void *arg) {
  int *p = arg;
  char c;
  // Raw syscalls only: this child shares the parent's memory (CLONE_VM).
  syscall(SYS_read, p[0], &c, 1);
  syscall(SYS_exit, 0);
  return 0;
}

static int write_file(struct op *o, const char *file, const char *text) {
  int fd = open(file, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fail(o, "open", NULL);
  ssize_t n = write(fd, text, strlen(text));
  int e = errno;
  close(fd);
  if (n != (ssize_t)strlen(text)) { errno = n < 0 ? e : EIO; return fail(o, "write(uid_map)", NULL); }
  return 0;
}

// Opens a user namespace whose uid and gid maps are `map` (uid_map text, e.g. "0 1073741824 65536").
static int userns_fd(struct op *o, const char *map) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return fail(o, "pipe2", NULL);
  size_t stack_size = 64 * 1024;
  char *stack = malloc(stack_size);
  int fd = -1;
  if (!stack) {
    close(p[0]);
    close(p[1]);
    errno = ENOMEM;
    return fail(o, "malloc", NULL);
  }
  pid_t pid = clone(userns_child, stack + stack_size, CLONE_NEWUSER | CLONE_VM, p);
  if (pid < 0) { fail(o, "clone(CLONE_NEWUSER)", NULL); goto out; }
  char file[64];
  snprintf(file, sizeof file, "/proc/%d/uid_map", pid);
  if (write_file(o, file, map) != 0) goto reap;
  snprintf(file, sizeof file, "/proc/%d/gid_map", pid);
  if (write_file(o, file, map) != 0) goto reap;
  snprintf(file, sizeof file, "/proc/%d/ns/user", pid);
  fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(o, "open", NULL);
reap:
  // The child holds a copy of both ends (its own fd table): a byte, not an EOF, lets it go.
  while (write(p[1], "x", 1) < 0 && errno == EINTR) {}
  while (waitpid(pid, NULL, __WALL) < 0 && errno == EINTR) {}
out:
  close(p[0]);
  close(p[1]);
  free(stack);
  return fd;
}

// mount(2) with this thread's file system ids set to `id` (uid and gid) for the call, its effective
// capabilities kept: an overlay records its mounter's credentials and makes its work dir, copies up
// and whiteouts with them. Over idmapped layers those must be ids the layers map (the VPS's root),
// not host root, which they do not map (the overlay then fails with EOVERFLOW, read-only). Thread
// credentials are per thread; this pool thread gets its own back before it returns.
#include <linux/capability.h>
static void do_mount_as(struct op *o) {
  long id = strtol(o->s[4], NULL, 10);
  struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
  struct __user_cap_data_struct saved[2], raised[2];
  if (syscall(SYS_capget, &hdr, saved) != 0) { fail(o, "capget", NULL); return; }
  long old_uid = syscall(SYS_setfsuid, id);
  long old_gid = syscall(SYS_setfsgid, id);
  if (syscall(SYS_setfsuid, -1) != id || syscall(SYS_setfsgid, -1) != id) {
    errno = EPERM;
    fail(o, "setfsuid", NULL);
  } else {
    // Changing the fs uid from 0 clears the file capabilities from the effective set: raise them again.
    memcpy(raised, saved, sizeof raised);
    for (int i = 0; i < 2; i++) raised[i].effective = raised[i].permitted;
    if (syscall(SYS_capset, &hdr, raised) != 0) fail(o, "capset", NULL);
    else if (mount(o->s[0], o->s[1], o->s[2], o->flags, o->s[3][0] ? o->s[3] : NULL) != 0) fail(o, "mount", o->s[1]);
  }
  syscall(SYS_setfsuid, old_uid);
  syscall(SYS_setfsgid, old_gid);
  syscall(SYS_capset, &hdr, saved);
}

static void do_idmap_mount(struct op *o) {
  const char *source = o->s[0], *target = o->s[1], *map = o->s[2];
  int ns = userns_fd(o, map);
  if (ns < 0) return;
  int tree = (int)syscall(SYS_open_tree, AT_FDCWD, source, OPEN_TREE_CLONE | O_CLOEXEC | (o->option ? AT_RECURSIVE : 0));
  if (tree < 0) { fail(o, "open_tree", source); close(ns); return; }
  struct rb_mount_attr attr = { .attr_set = MOUNT_ATTR_IDMAP | (uint64_t)o->flags, .userns_fd = (uint64_t)ns };
  if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0) fail(o, "mount_setattr", source);
  else if (syscall(SYS_move_mount, tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) != 0) fail(o, "move_mount", target);
  close(tree);
  close(ns);
}

// ---- processes ---------------------------------------------------------------------------------

static napi_value make_error(napi_env env, struct op *o);
static char *arg_string(napi_env env, napi_value v, const char *fn, int i);
static char *arg_string_any(napi_env env, napi_value v, const char *what);

// spawn(file, argv, envp|null, cwd, [fd0, fd1, fd2], newSession) -> [pid, Promise<[code|null, signal|null]>]
//
// posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK)) instead of libuv's fork(): a fork copies the
// page tables of the whole worker, ~1.5 ms of blocked event loop at 110 MiB of RSS and more as it
// grows, for every helper process; this costs the same whatever the worker's size. The exit is
// watched with a pidfd on the event loop (uv_poll): no thread waits, and libuv's own SIGCHLD
// handling (which waits only for its own children) never reaps these.
// The child gets default signal dispositions and an empty mask (Node ignores SIGPIPE), fds -1
// become /dev/null, all other fds are close-on-exec already (libuv's and ours).
struct child {
  uv_poll_t poll;
  int pidfd;
  pid_t pid;
  napi_env env;
  napi_deferred deferred;
  napi_async_context context;
  napi_ref resource;
};

static void child_closed(uv_handle_t *h) { free(h->data); }

static void child_exited(uv_poll_t *poll, int status, int events) {
  (void)status;
  (void)events;
  struct child *c = poll->data;
  siginfo_t si;
  memset(&si, 0, sizeof si);
  int rc = waitid(P_PID, (id_t)c->pid, &si, WEXITED | WNOHANG);
  if (rc != 0 && errno == EINTR) return;
  if (rc == 0 && si.si_pid == 0) return; // not exited yet (a spurious wake-up)
  // rc != 0 (ECHILD: reaped by someone else): the status is unknown, both null.
  uv_poll_stop(poll);
  close(c->pidfd);
  napi_env env = c->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value resource, result, code, sig;
  napi_get_reference_value(env, c->resource, &resource);
  napi_callback_scope cscope;
  napi_open_callback_scope(env, resource, c->context, &cscope);
  napi_get_null(env, &code);
  napi_get_null(env, &sig);
  if (rc == 0 && si.si_code == CLD_EXITED) napi_create_int32(env, si.si_status, &code);
  else if (rc == 0) napi_create_int32(env, si.si_status, &sig);
  napi_create_array_with_length(env, 2, &result);
  napi_set_element(env, result, 0, code);
  napi_set_element(env, result, 1, sig);
  napi_resolve_deferred(env, c->deferred, result);
  napi_close_callback_scope(env, cscope);
  napi_delete_reference(env, c->resource);
  napi_async_destroy(env, c->context);
  napi_close_handle_scope(env, scope);
  uv_close((uv_handle_t *)poll, child_closed);
}

// Frees a NULL-terminated array of strings.
static void free_strv(char **v) {
  if (!v) return;
  for (char **p = v; *p; p++) free(*p);
  free(v);
}

// A JS array of strings as a NULL-terminated C array; NULL after throwing.
static char **strv(napi_env env, napi_value arr, const char *what) {
  uint32_t n = 0;
  bool is_array = false;
  if (napi_is_array(env, arr, &is_array) != napi_ok || !is_array || napi_get_array_length(env, arr, &n) != napi_ok || n > 65536) {
    char msg[96];
    snprintf(msg, sizeof msg, "spawn: %s must be an array of strings", what);
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  char **v = calloc(n + 1, sizeof *v);
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    napi_get_element(env, arr, i, &e);
    v[i] = arg_string_any(env, e, what);
    if (!v[i]) { free_strv(v); return NULL; }
  }
  return v;
}

static napi_value js_spawn(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6) {
    napi_throw_type_error(env, NULL, "spawn(file, argv, envp, cwd, fds, newSession)");
    return NULL;
  }
  char *file = arg_string(env, argv[0], "spawn", 0);
  if (!file) return NULL;
  char **args = strv(env, argv[1], "argv");
  if (!args) { free(file); return NULL; }
  napi_valuetype envt;
  napi_typeof(env, argv[2], &envt);
  char **envp = NULL;
  if (envt != napi_null && !(envp = strv(env, argv[2], "envp"))) { free(file); free_strv(args); return NULL; }
  char *cwd = arg_string(env, argv[3], "spawn", 3);
  int fds[3] = {-1, -1, -1};
  bool new_session = false;
  uint32_t nfds = 0;
  bool ok = cwd != NULL && napi_get_array_length(env, argv[4], &nfds) == napi_ok && nfds == 3 &&
            napi_get_value_bool(env, argv[5], &new_session) == napi_ok;
  for (uint32_t i = 0; ok && i < 3; i++) {
    napi_value e;
    ok = napi_get_element(env, argv[4], i, &e) == napi_ok && napi_get_value_int32(env, e, &fds[i]) == napi_ok;
  }
  napi_value out = NULL;
  if (!ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) napi_throw_type_error(env, NULL, "spawn: fds must be [number, number, number], newSession a boolean");
    goto done;
  }
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  for (int i = 0; i < 3; i++) {
    if (fds[i] < 0) posix_spawn_file_actions_addopen(&fa, i, "/dev/null", O_RDWR, 0);
    else posix_spawn_file_actions_adddup2(&fa, fds[i], i);
  }
  if (cwd[0]) posix_spawn_file_actions_addchdir_np(&fa, cwd);
  sigset_t all, none;
  sigfillset(&all);
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | (new_session ? POSIX_SPAWN_SETSID : 0);
  posix_spawnattr_setflags(&attr, flags);
  pid_t pid;
  extern char **environ;
  int e = posix_spawnp(&pid, file, &fa, &attr, args, envp ? envp : environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (e != 0) {
    struct op err = {0};
    err.err = e;
    err.syscall = "posix_spawn";
    err.err_path = file;
    napi_throw(env, make_error(env, &err));
    goto done;
  }
  struct child *c = calloc(1, sizeof *c);
  c->pid = pid;
  c->env = env;
  c->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  uv_loop_t *loop = NULL;
  napi_get_uv_event_loop(env, &loop);
  napi_value promise, resource, name, pidv;
  napi_create_promise(env, &c->deferred, &promise);
  napi_create_object(env, &resource);
  napi_create_reference(env, resource, 1, &c->resource);
  napi_create_string_utf8(env, "runbox.spawn", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, resource, name, &c->context);
  if (c->pidfd < 0 || uv_poll_init(loop, &c->poll, c->pidfd) != 0) {
    // Cannot watch it (no pidfd: kernel < 5.3): wait for it the slow way, so it is never a zombie.
    int st;
    waitpid(pid, &st, 0);
    napi_value code, sig, result;
    napi_get_null(env, &code);
    napi_get_null(env, &sig);
    if (WIFEXITED(st)) napi_create_int32(env, WEXITSTATUS(st), &code);
    else napi_create_int32(env, WTERMSIG(st), &sig);
    napi_create_array_with_length(env, 2, &result);
    napi_set_element(env, result, 0, code);
    napi_set_element(env, result, 1, sig);
    napi_resolve_deferred(env, c->deferred, result);
    if (c->pidfd >= 0) close(c->pidfd);
    napi_delete_reference(env, c->resource);
    napi_async_destroy(env, c->context);
    free(c);
  } else {
    c->poll.data = c;
    uv_poll_start(&c->poll, UV_READABLE, child_exited);
  }
  napi_create_array_with_length(env, 2, &out);
  napi_create_int32(env, pid, &pidv);
  napi_set_element(env, out, 0, pidv);
  napi_set_element(env, out, 1, promise);
done:
  free(file);
  free(cwd);
  free_strv(args);
  free_strv(envp);
  return out;
}

// ---- N-API plumbing ------------------------------------------------------------------------------

static void execute(napi_env env, void *data) {
  (void)env;
  struct op *o = data;
  errno = 0;
  switch (o->kind) {
  case OP_MOUNT:
    if (mount(o->s[0], o->s[1], o->s[2], o->flags, o->s[3][0] ? o->s[3] : NULL) != 0) fail(o, "mount", o->s[1]);
    break;
  case OP_MOUNT_LOOP: do_mount_loop(o); break;
  case OP_UMOUNT:
    if (umount2(o->s[0], (int)o->flags) != 0) fail(o, "umount2", o->s[0]);
    break;
  case OP_COPY_SPARSE: do_copy_sparse(o); break;
  case OP_FREEZE: do_freeze(o, 1); break;
  case OP_THAW: do_freeze(o, 0); break;
  case OP_NETNS_ADD: do_netns_add(o); break;
  case OP_NETNS_DEL: do_netns_del(o); break;
  case OP_SECCOMP_FILTER: do_seccomp_filter(o); break;
  case OP_IDMAP_MOUNT: do_idmap_mount(o); break;
  case OP_MOUNT_AS: do_mount_as(o); break;
  }
}

static napi_value make_error(napi_env env, struct op *o) {
  const char *name = strerrorname_np(o->err);
  char msg[512];
  snprintf(msg, sizeof msg, "%s%s%s: %s", o->syscall, o->err_path ? " " : "", o->err_path ? o->err_path : "", strerror(o->err));
  napi_value code, text, error, v;
  napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &error);
  napi_create_int32(env, -o->err, &v);
  napi_set_named_property(env, error, "errno", v);
  napi_create_string_utf8(env, o->syscall, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, error, "syscall", v);
  if (o->err_path) {
    napi_create_string_utf8(env, o->err_path, NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, error, "path", v);
  }
  return error;
}

static void complete(napi_env env, napi_status status, void *data) {
  struct op *o = data;
  napi_value result;
  if (status != napi_ok) {
    napi_create_string_utf8(env, "sys.node: the work item was cancelled", NAPI_AUTO_LENGTH, &result);
    napi_value err;
    napi_create_error(env, NULL, result, &err);
    napi_reject_deferred(env, o->deferred, err);
  } else if (o->err) {
    napi_reject_deferred(env, o->deferred, make_error(env, o));
  } else {
    if (o->kind == OP_MOUNT_LOOP) napi_create_string_utf8(env, o->out, NAPI_AUTO_LENGTH, &result);
    else if (o->kind == OP_COPY_SPARSE) napi_create_double(env, o->bytes, &result);
    else if (o->kind == OP_SECCOMP_FILTER) napi_create_buffer_copy(env, o->len, o->buf, NULL, &result);
    else napi_get_undefined(env, &result);
    napi_resolve_deferred(env, o->deferred, result);
  }
  napi_delete_async_work(env, o->work);
  op_free(o);
}

// Reads a string of at most `max` bytes with no NUL inside; returns NULL after throwing a TypeError
// that names it as `what`.
static char *read_string(napi_env env, napi_value v, size_t max, const char *what) {
  size_t len = 0;
  char msg[160];
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok || len > max) {
    snprintf(msg, sizeof msg, "%s must be a string of at most %zu bytes", what, max);
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  char *s = malloc(len + 1);
  napi_get_value_string_utf8(env, v, s, len + 1, &len);
  if (strlen(s) != len) {
    free(s);
    snprintf(msg, sizeof msg, "%s contains a NUL byte", what);
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  return s;
}

// Argument i of fn: at most 4095 bytes (PATH_MAX and a mount's option page).
static char *arg_string(napi_env env, napi_value v, const char *fn, int i) {
  char what[96];
  snprintf(what, sizeof what, "%s: argument %d", fn, i + 1);
  return read_string(env, v, 4095, what);
}

// An element of spawn's argv or envp: at most 128 KiB (the kernel's MAX_ARG_STRLEN).
static char *arg_string_any(napi_env env, napi_value v, const char *what) {
  char label[96];
  snprintf(label, sizeof label, "spawn: every %s element", what);
  return read_string(env, v, 131071, label);
}

// fn(str × nstr [, number flags] [, boolean option]) -> Promise; the flags number is also the pid
// of seccompFilter(pid).
static napi_value start(napi_env env, napi_callback_info info, enum op_kind kind, const char *fn, int nstr, int has_flags, int has_option) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  size_t want = (size_t)(nstr + has_flags + has_option);
  if (argc < want) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s: expects %zu arguments", fn, want);
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  struct op *o = calloc(1, sizeof *o);
  o->kind = kind;
  for (int i = 0; i < MAX_ARGS; i++) {
    o->s[i] = i < nstr ? arg_string(env, argv[i], fn, i) : strdup("");
    if (!o->s[i]) { op_free(o); return NULL; }
  }
  if (has_flags) {
    int64_t f = 0;
    if (napi_get_value_int64(env, argv[nstr], &f) != napi_ok || f < 0) {
      op_free(o);
      napi_throw_type_error(env, NULL, "flags must be a non-negative number");
      return NULL;
    }
    o->flags = (unsigned long)f;
    o->pid = (int)f;
  }
  if (has_option) {
    bool b = false;
    if (napi_get_value_bool(env, argv[nstr + has_flags], &b) != napi_ok) {
      op_free(o);
      napi_throw_type_error(env, NULL, "the last argument must be a boolean");
      return NULL;
    }
    o->option = b;
  }
  napi_value promise, name;
  napi_create_promise(env, &o->deferred, &promise);
  napi_create_string_utf8(env, fn, NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, execute, complete, o, &o->work) != napi_ok ||
      napi_queue_async_work(env, o->work) != napi_ok) {
    napi_value err, text;
    napi_create_string_utf8(env, "sys.node: could not queue the work", NAPI_AUTO_LENGTH, &text);
    napi_create_error(env, NULL, text, &err);
    napi_reject_deferred(env, o->deferred, err);
    op_free(o);
  }
  return promise;
}

// mount(source, target, fstype, data, flags)
static napi_value js_mount(napi_env env, napi_callback_info info) { return start(env, info, OP_MOUNT, "mount", 4, 1, 0); }
// mountLoop(image, target, fstype, data, flags, readOnly) -> "/dev/loopN"
static napi_value js_mount_loop(napi_env env, napi_callback_info info) { return start(env, info, OP_MOUNT_LOOP, "mountLoop", 4, 1, 1); }
// umount(target, flags)
static napi_value js_umount(napi_env env, napi_callback_info info) { return start(env, info, OP_UMOUNT, "umount", 1, 1, 0); }
// copySparse(src, dst) -> bytes copied
static napi_value js_copy_sparse(napi_env env, napi_callback_info info) { return start(env, info, OP_COPY_SPARSE, "copySparse", 2, 0, 0); }
static napi_value js_freeze(napi_env env, napi_callback_info info) { return start(env, info, OP_FREEZE, "freeze", 1, 0, 0); }
static napi_value js_thaw(napi_env env, napi_callback_info info) { return start(env, info, OP_THAW, "thaw", 1, 0, 0); }
// netnsAdd(runDir, file, loopbackUp)
static napi_value js_netns_add(napi_env env, napi_callback_info info) { return start(env, info, OP_NETNS_ADD, "netnsAdd", 2, 0, 1); }
// netnsDel(file)
static napi_value js_netns_del(napi_env env, napi_callback_info info) { return start(env, info, OP_NETNS_DEL, "netnsDel", 1, 0, 0); }
// seccompFilter(pid) -> Buffer of struct sock_filter
static napi_value js_seccomp_filter(napi_env env, napi_callback_info info) { return start(env, info, OP_SECCOMP_FILTER, "seccompFilter", 0, 1, 0); }
// mountAs(source, target, fstype, data, fsid, flags)
static napi_value js_mount_as(napi_env env, napi_callback_info info) { return start(env, info, OP_MOUNT_AS, "mountAs", 5, 1, 0); }
// idmapMount(source, target, map, attrFlags, recursive)
static napi_value js_idmap_mount(napi_env env, napi_callback_info info) { return start(env, info, OP_IDMAP_MOUNT, "idmapMount", 3, 1, 1); }

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  static const struct { const char *name; napi_callback fn; } fns[] = {
      {"mount", js_mount},   {"mountLoop", js_mount_loop}, {"umount", js_umount},     {"copySparse", js_copy_sparse},
      {"freeze", js_freeze}, {"thaw", js_thaw},            {"netnsAdd", js_netns_add}, {"netnsDel", js_netns_del},
      {"seccompFilter", js_seccomp_filter}, {"spawn", js_spawn}, {"idmapMount", js_idmap_mount}, {"mountAs", js_mount_as},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f) != napi_ok ||
        napi_set_named_property(env, exports, fns[i].name, f) != napi_ok) {
      napi_throw_error(env, NULL, "sys.node: could not register its functions");
      return NULL;
    }
  }
  return exports;
}
