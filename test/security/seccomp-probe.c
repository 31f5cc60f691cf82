/*
 * Seccomp probe for test/security/seccomp.test.ts: runs inside a VPS as root, makes one
 * representative syscall per family and prints "name errno" per line (0: it succeeded).
 *
 * Every probe runs in a child of its own (state changes such as personality or a new user
 * namespace stay there), and its arguments are chosen so that the call is harmless if it is
 * allowed and, where the kernel allows it, fails with an errno of its own (EFAULT, EBADF, EINVAL,
 * ENOENT) that tells "the kernel refused" apart from "the filter refused" (EPERM/ENOSYS).
 * Nothing connects anywhere: sockets are only created.
 *
 * `probe-seccomp` runs all probes; `probe-seccomp noop` exits 0 (the exec target).
 * `probe-seccomp dump-filter PID` runs on the host (root, CAP_SYS_ADMIN, no filter of its own): it
 * prints the classic BPF program of PID's newest seccomp filter, one "code jt jf k" per line, as the
 * kernel holds it (after runc and libseccomp compiled the profile), so the test can evaluate it for
 * ABIs this host cannot execute (x86 32-bit, x32).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Returns 0 or the errno of a syscall-style result (-1 + errno). */
static long err_of(long r) { return r < 0 ? errno : 0; }

/* A result that is a file descriptor: close it, report success. */
static long fd_result(long fd) {
  if (fd < 0) return errno;
  close((int)fd);
  return 0;
}

/* fork-like raw clone with FLAGS (no CLONE_VM: the child runs on a copy of this stack). */
static long raw_clone(unsigned long flags) {
  long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
  if (pid == 0) _exit(0);
  if (pid < 0) return errno;
  waitpid((pid_t)pid, NULL, 0);
  return 0;
}

static void *thread_fn(void *arg) { return arg; }

static long probe_thread(void) {
  pthread_t t;
  int rc = pthread_create(&t, NULL, thread_fn, NULL);
  if (rc) return rc;
  return pthread_join(t, NULL);
}

static long probe_fork_exec(void) {
  pid_t pid = fork();
  if (pid < 0) return errno;
  if (pid == 0) {
    execl("/proc/self/exe", "probe-seccomp", "noop", (char *)NULL);
    _exit(100 + errno % 100);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1000 + st;
}

static long probe_spawn(void) {
  pid_t pid;
  char *argv[] = {"probe-seccomp", "noop", NULL};
  int rc = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ);
  if (rc) return rc;
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1000 + st;
}

static long probe_vfork(void) {
  pid_t pid = vfork();
  if (pid == 0) _exit(0);
  if (pid < 0) return errno;
  waitpid(pid, NULL, 0);
  return 0;
}

static long probe_mmap(void) {
  void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return errno;
  long r = err_of(mprotect(p, 4096, PROT_READ));
  munmap(p, 4096);
  return r;
}

static long probe_traceme(void) {
  pid_t pid = fork();
  if (pid < 0) return errno;
  if (pid == 0) _exit(ptrace(PTRACE_TRACEME, 0, NULL, NULL) == 0 ? 0 : errno);
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + st;
}

/* Reads a byte of this process's memory through process_vm_readv (ptrace access rules). */
static long probe_vm_readv(void) {
  char a = 1, b = 0;
  struct iovec local = {&b, 1}, remote = {&a, 1};
  long n = syscall(SYS_process_vm_readv, getpid(), &local, 1, &remote, 1, 0);
  if (n < 0) return errno;
  return n == 1 && b == 1 ? 0 : 1000;
}

static long probe_signalfd(void) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGUSR1);
  return fd_result(signalfd(-1, &s, SFD_CLOEXEC));
}

/* One probe: a name and a function run in a child; the child's exit status carries the errno. */
struct probe {
  const char *name;
  long (*fn)(void);
};

#define P(name, expr) static long p_##name(void) { return (expr); }
P(unshare_user, err_of(unshare(CLONE_NEWUSER)))
P(unshare_net, err_of(unshare(CLONE_NEWNET)))
P(setns, err_of(setns(-1, 0)))
P(clone_newns, raw_clone(CLONE_NEWNS))
P(clone_newcgroup, raw_clone(CLONE_NEWCGROUP))
P(clone_newuts, raw_clone(CLONE_NEWUTS))
P(clone_newipc, raw_clone(CLONE_NEWIPC))
P(clone_newuser, raw_clone(CLONE_NEWUSER))
P(clone_newpid, raw_clone(CLONE_NEWPID))
P(clone_newnet, raw_clone(CLONE_NEWNET))
P(clone3, err_of(syscall(SYS_clone3, NULL, 0)))
P(mount, err_of(syscall(SYS_mount, NULL, NULL, NULL, 0, NULL)))
P(umount2, err_of(syscall(SYS_umount2, "/nonexistent-runbox-probe", 0)))
P(pivot_root, err_of(syscall(SYS_pivot_root, "/nonexistent-runbox-probe", "/nonexistent-runbox-probe")))
P(fsopen, fd_result(syscall(SYS_fsopen, NULL, 0)))
P(open_tree, fd_result(syscall(SYS_open_tree, -1, NULL, 0)))
P(move_mount, err_of(syscall(SYS_move_mount, -1, NULL, -1, NULL, 0)))
P(mount_setattr, err_of(syscall(SYS_mount_setattr, -1, NULL, 0, NULL, 0)))
P(open_tree_attr, fd_result(syscall(467, -1, NULL, 0, NULL, 0)))
P(bpf, fd_result(syscall(SYS_bpf, -1, NULL, 0)))
P(perf_event_open, fd_result(syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0)))
P(keyctl, err_of(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0)))
P(add_key, err_of(syscall(SYS_add_key, NULL, NULL, NULL, 0, 0)))
P(request_key, err_of(syscall(SYS_request_key, NULL, NULL, NULL, 0)))
P(userfaultfd, fd_result(syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */)))
P(io_uring_setup, fd_result(syscall(SYS_io_uring_setup, 0, NULL)))
P(kexec_load, err_of(syscall(SYS_kexec_load, 0, 0, NULL, 0)))
P(init_module, err_of(syscall(SYS_init_module, NULL, 0, NULL)))
P(finit_module, err_of(syscall(SYS_finit_module, -1, NULL, 0)))
P(reboot, err_of(syscall(SYS_reboot, 0, 0, 0, NULL))) /* bad magic: a no-op even if allowed */
P(swapon, err_of(syscall(SYS_swapon, NULL, 0)))
P(acct, err_of(syscall(SYS_acct, NULL)))
P(settimeofday, err_of(syscall(SYS_settimeofday, NULL, NULL))) /* no time, no zone: a no-op if allowed */
P(clock_settime, err_of(syscall(SYS_clock_settime, CLOCK_REALTIME, NULL)))
P(open_by_handle_at, fd_result(syscall(SYS_open_by_handle_at, -1, NULL, 0)))
P(sethostname, err_of(syscall(SYS_sethostname, NULL, 0)))
P(syslog, err_of(syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0)))
P(personality_addr_no_randomize, err_of(syscall(SYS_personality, 0x0040000UL)))
P(personality_read_implies_exec, err_of(syscall(SYS_personality, 0x0400000UL)))
P(personality_high_bits, err_of(syscall(SYS_personality, 0x100000000UL)))
P(socket_vsock, fd_result(syscall(SYS_socket, 40 /* AF_VSOCK */, SOCK_STREAM, 0)))
P(socket_vsock_high_bits, fd_result(syscall(SYS_socket, 0x100000028UL, SOCK_STREAM, 0)))
P(socket_alg, fd_result(syscall(SYS_socket, 38 /* AF_ALG */, SOCK_SEQPACKET, 0)))
P(socket_xdp, fd_result(syscall(SYS_socket, 44 /* AF_XDP */, SOCK_RAW, 0)))
P(socket_zero, fd_result(syscall(SYS_socket, 0, SOCK_STREAM, 0)))
P(socketpair_vsock, ({ int sv[2]; long r = err_of(syscall(SYS_socketpair, 40, SOCK_STREAM, 0, sv)); if (!r) { close(sv[0]); close(sv[1]); } r; }))
P(kcmp, err_of(syscall(SYS_kcmp, getpid(), getpid(), 0 /* KCMP_FILE */, 0, 0)))
P(listmount, err_of(syscall(458, NULL, NULL, 0, 0)))
P(lsm_list_modules, err_of(syscall(461, NULL, NULL, 0)))
P(syscall_1000, err_of(syscall(1000, 0, 0, 0)))
/* what real programs do */
P(fork_exec, probe_fork_exec())
P(posix_spawn, probe_spawn())
P(vfork, probe_vfork())
P(fork_raw_clone, raw_clone(0))
P(thread, probe_thread())
P(epoll, fd_result(epoll_create1(EPOLL_CLOEXEC)))
P(signalfd, probe_signalfd())
P(timerfd, fd_result(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC)))
P(eventfd, fd_result(syscall(SYS_eventfd2, 0, 0)))
P(memfd, fd_result(syscall(SYS_memfd_create, "probe", 0)))
P(mmap_mprotect, probe_mmap())
P(socket_inet, fd_result(socket(AF_INET, SOCK_STREAM, 0)))
P(socket_inet6, fd_result(socket(AF_INET6, SOCK_DGRAM, 0)))
P(socket_unix, fd_result(socket(AF_UNIX, SOCK_STREAM, 0)))
P(socket_netlink, fd_result(socket(AF_NETLINK, SOCK_RAW, 0)))
P(socket_packet, fd_result(socket(AF_PACKET, SOCK_RAW, 0)))
P(socketpair, ({ int sv[2]; long r = err_of(socketpair(AF_UNIX, SOCK_STREAM, 0, sv)); if (!r) { close(sv[0]); close(sv[1]); } r; }))
P(personality_query, err_of(syscall(SYS_personality, 0xffffffffUL)))
P(personality_linux32, err_of(syscall(SYS_personality, 0x8UL)))
P(ptrace_traceme, probe_traceme())
P(process_vm_readv, probe_vm_readv())
P(chroot, err_of(chroot("/")))
P(getrandom, ({ char b[8]; err_of(syscall(SYS_getrandom, b, sizeof b, 0)); }))

#define E(name) {#name, p_##name}
static const struct probe probes[] = {
  E(unshare_user), E(unshare_net), E(setns), E(clone_newns), E(clone_newcgroup), E(clone_newuts),
  E(clone_newipc), E(clone_newuser), E(clone_newpid), E(clone_newnet), E(clone3), E(mount), E(umount2),
  E(pivot_root), E(fsopen), E(open_tree), E(move_mount), E(mount_setattr), E(open_tree_attr), E(bpf),
  E(perf_event_open), E(keyctl), E(add_key), E(request_key), E(userfaultfd), E(io_uring_setup),
  E(kexec_load), E(init_module), E(finit_module), E(reboot), E(swapon), E(acct), E(settimeofday),
  E(clock_settime), E(open_by_handle_at), E(sethostname), E(syslog), E(personality_addr_no_randomize),
  E(personality_read_implies_exec), E(personality_high_bits), E(socket_vsock), E(socket_vsock_high_bits),
  E(socket_alg), E(socket_xdp), E(socket_zero), E(socketpair_vsock), E(kcmp), E(listmount), E(lsm_list_modules), E(syscall_1000),
  E(fork_exec), E(posix_spawn), E(vfork), E(fork_raw_clone), E(thread), E(epoll), E(signalfd), E(timerfd),
  E(eventfd), E(memfd), E(mmap_mprotect), E(socket_inet), E(socket_inet6), E(socket_unix), E(socket_netlink),
  E(socket_packet), E(socketpair), E(personality_query), E(personality_linux32), E(ptrace_traceme),
  E(process_vm_readv), E(chroot), E(getrandom),
};

#ifndef PTRACE_SECCOMP_GET_FILTER
#define PTRACE_SECCOMP_GET_FILTER 0x420c
#endif

static int dump_filter(pid_t pid) {
  int st, rc = 1;
  if (ptrace(PTRACE_SEIZE, pid, NULL, NULL)) { perror("PTRACE_SEIZE"); return 1; }
  if (ptrace(PTRACE_INTERRUPT, pid, NULL, NULL) || waitpid(pid, &st, __WALL) != pid) { perror("PTRACE_INTERRUPT"); goto out; }
  long n = ptrace(PTRACE_SECCOMP_GET_FILTER, pid, (void *)0, NULL);
  if (n <= 0) { perror("PTRACE_SECCOMP_GET_FILTER"); goto out; }
  struct sock_filter *f = calloc((size_t)n, sizeof *f);
  if (!f || ptrace(PTRACE_SECCOMP_GET_FILTER, pid, (void *)0, f) != n) { perror("PTRACE_SECCOMP_GET_FILTER"); goto out; }
  for (long i = 0; i < n; i++) printf("%u %u %u %u\n", f[i].code, f[i].jt, f[i].jf, f[i].k);
  rc = 0;
out:
  ptrace(PTRACE_DETACH, pid, NULL, NULL);
  return rc;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "noop") == 0) return 0;
  if (argc > 2 && strcmp(argv[1], "dump-filter") == 0) return dump_filter((pid_t)atoi(argv[2]));
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
    int fds[2];
    if (pipe(fds)) return 2;
    pid_t pid = fork();
    if (pid < 0) return 3;
    if (pid == 0) {
      close(fds[0]);
      errno = 0;
      long r = probes[i].fn();
      if (write(fds[1], &r, sizeof r) != sizeof r) _exit(4);
      _exit(0);
    }
    close(fds[1]);
    long r = -1;
    ssize_t n = read(fds[0], &r, sizeof r);
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (n != sizeof r) printf("%s died status=%d\n", probes[i].name, st);
    else printf("%s %ld\n", probes[i].name, r);
  }
  printf("done\n");
  return 0;
}
