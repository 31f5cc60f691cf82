// runbox-userns-limits PID NAME=VALUE...: joins the user namespace of process PID and writes VALUE
// to /proc/sys/user/NAME for each pair. These are the per-namespace caps of the counts the kernel
// keeps up the user-namespace tree (inotify instances and watches, runtime/userns/ranges.ts); a
// process that joins a user namespace holds every capability in it, so it may write them, and
// /proc/sys/user shows the joining process's namespace. The host runs it after a VPS starts or is
// restored; the VPS itself cannot (no CAP_SYS_RESOURCE there, /proc/sys read-only).
//
// A static program of its own (built by scripts/setup.sh): ~1 ms a run, where nsenter + sh took
// ~4.4 ms, and setns into a user namespace is impossible from the worker (it has threads).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int digits(const char *s) {
  if (!*s || strlen(s) > 10) return 0;
  for (; *s; s++) if (*s < '0' || *s > '9') return 0;
  return 1;
}

static int name_ok(const char *s, size_t n) {
  if (n == 0 || n > 64) return 0;
  for (size_t i = 0; i < n; i++) if (!((s[i] >= 'a' && s[i] <= 'z') || s[i] == '_')) return 0;
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 3 || !digits(argv[1])) {
    fprintf(stderr, "usage: runbox-userns-limits PID NAME=VALUE...\n");
    return 2;
  }
  char path[128];
  snprintf(path, sizeof path, "/proc/%s/ns/user", argv[1]);
  int ns = open(path, O_RDONLY | O_CLOEXEC);
  if (ns < 0 || setns(ns, CLONE_NEWUSER) != 0) {
    fprintf(stderr, "runbox-userns-limits: joining %s: %s\n", path, strerror(errno));
    return 1;
  }
  close(ns);
  for (int i = 2; i < argc; i++) {
    const char *eq = strchr(argv[i], '=');
    if (!eq || !name_ok(argv[i], (size_t)(eq - argv[i])) || !digits(eq + 1)) {
      fprintf(stderr, "runbox-userns-limits: bad pair \"%s\"\n", argv[i]);
      return 2;
    }
    snprintf(path, sizeof path, "/proc/sys/user/%.*s", (int)(eq - argv[i]), argv[i]);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : write(fd, eq + 1, strlen(eq + 1));
    if (n != (ssize_t)strlen(eq + 1)) {
      fprintf(stderr, "runbox-userns-limits: writing %s: %s\n", path, strerror(errno));
      return 1;
    }
    close(fd);
  }
  return 0;
}
