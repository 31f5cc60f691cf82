/*
 * runbox-agent: PID 1 of every runbox VPS (a fresh runc container per job).
 *
 * The wire protocol is specified in runtime/agent/PROTOCOL.md; that file is the contract
 * with the TypeScript host and this program implements exactly that. In short: fd 0
 * carries host -> agent frames (J job spec, I/C stdin, K signal, W file write, G collect
 * files), fd 1 carries agent -> host frames (R ready, S started, O/E output, D diagnostic,
 * X exit, w write result, F/B/Z collected files), fd 2 is free-form diagnostics for whoever
 * reads the container log.
 *
 * Why a native PID 1 of our own rather than running the job directly:
 *  - PID 1 must reap orphans (otherwise zombies pile up) and must kill leftovers
 *    (`sleep 100 &`) when the job ends, or they would keep the output pipes open.
 *  - The kernel drops signals to a PID 1 that has no handler for them; we block them and
 *    read them from a signalfd so SIGTERM from `runc kill` can be forwarded to the job.
 *  - Every frame to the host is ONE write() of at most PIPE_BUF (4096) bytes, so it is
 *    atomic in the pipe: a CRIU checkpoint can never capture half a frame, and after
 *    `runc restore` the host sees a clean frame stream on its new pipes.
 *  - stdin from the host is buffered here (up to 64 MiB), so a job that never reads its
 *    stdin can never make the agent stop reading fd 0 (which would deadlock the host).
 *  - Files go in (W) and out (G) through the agent, never through the host's view of the
 *    VPS's disk: the agent lives in the VPS's mount namespace, so a symlink planted by the
 *    job can only ever resolve to a file of the VPS itself, never to a host file (the
 *    Judge0-style escapes, CVE-2024-28185 and CVE-2024-28189).
 *
 * Everything runs in one poll() loop: fd 0, the signalfd, and the job's stdout/stderr/stdin
 * pipes. All fds are O_CLOEXEC so nothing leaks into the job.
 *
 * Test mode: kill(-1, sig) from PID 1 of a pid namespace signals every *other* process of
 * the VPS. Outside a container it would signal every process the caller may signal, so
 * "kill every other process" means kill(-pgid_of_job, sig) instead when RUNBOX_AGENT_TEST=1
 * is set, and also (as a safety net) whenever the agent is not PID 1. In that mode the agent
 * also becomes a child subreaper so orphans of the job are reparented to it, like under PID 1.
 * runtime/agent/test-agent.py exercises both modes.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o build/runbox-agent runtime/agent/agent.c
 * (static glibc cannot use NSS, hence the hand-written /etc/passwd and /etc/group parsing).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FRAME_MAX     4096                    /* PIPE_BUF: largest atomic pipe write */
#define PAYLOAD_MAX   (FRAME_MAX - 5)         /* 5-byte header: type u8 + length u32 LE */
#define IN_FRAME_MAX  (1024u * 1024u)         /* host frames above this are protocol errors */
#define STDIN_CAP     (64u * 1024u * 1024u)   /* max buffered, not yet consumed job stdin */
#define FINISH_MS     5000                    /* max wait for pipe EOF after the job ended */
#define MAX_GROUPS    1024
#define COLLECT_SMALL (1024u * 1024u)         /* collected files up to this size are read whole
                                                 before their F header, so its size is exact */
#define DEFAULT_PATH  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

enum { J_NONE, J_RUNNING, J_FINISHING, J_DONE };

static struct {
    int state;
    pid_t pid;
    int in_fd, out_fd, err_fd;   /* our ends of the job's stdio pipes, -1 when closed */
    int status;
    struct rusage ru;
    int64_t deadline;            /* J_FINISHING: stop waiting for pipe EOF at this time */
} job;                           /* the fds are set to -1 first thing in main() */

/* Job stdin received from the host but not yet written to the job: bytes [head, len). */
static struct {
    unsigned char *buf;
    size_t head, len, cap;
    int eof;       /* 'C' received: close the pipe once the buffer is empty */
    int dead;      /* the job ended or closed its stdin: drop everything */
    int dropped;   /* the host was already told that data over the cap was dropped */
} in;

static int pid1_mode;        /* real kill(-1) semantics (PID 1 and not test mode) */
static int host_open = 1;    /* still reading fd 0 */
static int host_broken;      /* a write to fd 1 failed (logged once) */

/* ---------------------------------------------------------------- small helpers */

/* All integers on the wire are little-endian, whatever the CPU. */
static void putle(unsigned char *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

/* vsnprintf that returns the length actually stored (never negative, never > cap - 1). */
static size_t vfmt(char *buf, size_t cap, const char *fmt, va_list ap) {
    int n = vsnprintf(buf, cap, fmt, ap);
    return n < 0 ? 0 : (size_t)n >= cap ? cap - 1 : (size_t)n;
}

/* One line on fd 2, written with one write() so concurrent writers do not interleave. */
static void __attribute__((format(printf, 1, 2))) logmsg(const char *fmt, ...) {
    char buf[1024] = "runbox-agent: ";
    size_t n = strlen(buf);
    va_list ap;
    va_start(ap, fmt);
    n += vfmt(buf + n, sizeof buf - n - 1, fmt, ap);
    va_end(ap);
    buf[n++] = '\n';
    while (write(2, buf, n) < 0 && errno == EINTR) {}
}

/* ------------------------------------------------------------- frames to host */

/*
 * Send one frame with ONE write() (<= 4096 bytes in all), so it is atomic in the pipe.
 * Blocking on a full pipe is intended: it is the backpressure that slows the job down.
 */
/*
 * Job output bytes (O and E payloads) written to the host so far. It lives in this process's
 * memory, so a checkpoint captures it: after a restore the host asks for it (Q) and cuts its copy
 * of the log back to exactly what this VPS had produced at the checkpoint (no loss, no repeat).
 */
static uint64_t output_total;

static void send_frame(unsigned char type, const void *payload, size_t n) {
    unsigned char buf[FRAME_MAX];
    if (n > PAYLOAD_MAX) n = PAYLOAD_MAX;   /* callers never exceed it; safety net only */
    buf[0] = type;
    putle(buf + 1, n, 4);
    if (n) memcpy(buf + 5, payload, n);
    size_t len = n + 5, off = 0;
    while (off < len) {
        ssize_t w = write(1, buf + off, len - off);
        if (w > 0) {
            off += (size_t)w;
            if (off == len && (type == 'O' || type == 'E')) output_total += n;
            continue;                                 /* partial only if fd 1 isn't a pipe */
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) {              /* someone made fd 1 non-blocking */
            struct pollfd p = { 1, POLLOUT, 0 };
            poll(&p, 1, -1);
            continue;
        }
        if (!host_broken) logmsg("writing to host failed: %s", strerror(errno));
        host_broken = 1;      /* keep going: after a CRIU restore fd 1 may work again */
        return;
    }
}

static void __attribute__((format(printf, 1, 2))) send_diag(const char *fmt, ...) {
    char buf[PAYLOAD_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    size_t n = vfmt(buf, sizeof buf, fmt, ap);
    va_end(ap);
    send_frame('D', buf, n);
}

static void send_exit(int32_t code, int32_t sig, uint64_t cpu_us, uint64_t maxrss_kib) {
    unsigned char p[24];
    putle(p, (uint32_t)code, 4);
    putle(p + 4, (uint32_t)sig, 4);
    putle(p + 8, cpu_us, 8);
    putle(p + 16, maxrss_kib, 8);
    send_frame('X', p, sizeof p);
}

/* ------------------------------------------------ users and groups (no NSS) */

struct ident {
    uid_t uid;
    gid_t gid;
    char home[4096];
    gid_t groups[MAX_GROUPS];
    int ngroups;
};

/* Strict decimal id: digits only (no sign, no spaces), at most 2^32 - 2. */
static int parse_id(const char *s, unsigned long *out) {
    size_t len = strlen(s);
    if (len == 0 || len > 10 || strspn(s, "0123456789") != len) return -1;
    unsigned long v = strtoul(s, NULL, 10);
    if (v > 0xfffffffeUL) return -1;
    *out = v;
    return 0;
}

/* Next entry of /etc/passwd or /etc/group split into at most nf fields (the last keeps
 * any further colons). Returns the field count, or -1 at EOF. Skips NIS "+"/"-" lines. */
static int next_entry(FILE *fp, char **line, size_t *cap, char **f, int nf) {
    ssize_t len;
    while ((len = getline(line, cap, fp)) >= 0) {
        char *s = *line;
        if (len > 0 && s[len - 1] == '\n') s[--len] = '\0';
        if (!*s || *s == '#' || *s == '+' || *s == '-') continue;
        int n = 0;
        for (f[n++] = s; n < nf && (s = strchr(s, ':')) != NULL; f[n++] = s) *s++ = '\0';
        return n;
    }
    return -1;
}

static void add_group(struct ident *id, gid_t g) {
    for (int i = 0; i < id->ngroups; i++)
        if (id->groups[i] == g) return;
    if (id->ngroups < MAX_GROUPS) id->groups[id->ngroups++] = g;
}

/*
 * Resolve "name", "uid", "name:group" or "uid:gid" (NULL or empty = root) the way runc
 * does: a uid absent from /etc/passwd gets gid 0 and HOME=/; the supplementary groups are
 * the /etc/group entries listing the user, unless a group was given explicitly (then that
 * group is the only one). Returns 0, or -1 with a message in err.
 */
static int resolve_user(const char *spec, struct ident *id, char *err, size_t errlen) {
    char buf[1024], name[256] = "", *f[7], *line = NULL, *group;
    size_t cap = 0;
    unsigned long uid = 0, gid = 0, v, w;
    int n, found = 0;
    snprintf(buf, sizeof buf, "%s", spec && *spec ? spec : "0");
    if ((group = strchr(buf, ':')) != NULL) *group++ = '\0';
    int by_uid = parse_id(buf, &uid) == 0;
    snprintf(id->home, sizeof id->home, "/");
    id->ngroups = 0;

    /* passwd fields: name:password:uid:gid:gecos:home:shell */
    FILE *fp = fopen("/etc/passwd", "re");
    while (fp && !found && (n = next_entry(fp, &line, &cap, f, 7)) >= 0)
        if (n >= 6 && !parse_id(f[2], &v) && !parse_id(f[3], &w) &&
            (by_uid ? v == uid : strcmp(f[0], buf) == 0)) {
            found = 1;
            uid = v;
            gid = w;
            snprintf(name, sizeof name, "%s", f[0]);
            if (*f[5]) snprintf(id->home, sizeof id->home, "%s", f[5]);
        }
    if (fp) fclose(fp);

    /* group fields: name:password:gid:member,member,... */
    int group_ok = !group || parse_id(group, &gid) == 0;
    if (!group_ok || (!group && found)) {
        fp = fopen("/etc/group", "re");
        while (fp && !group_ok && (n = next_entry(fp, &line, &cap, f, 4)) >= 0)
            if (n >= 3 && !parse_id(f[2], &v) && strcmp(f[0], group) == 0) { gid = v; group_ok = 1; }
        while (fp && !group && (n = next_entry(fp, &line, &cap, f, 4)) >= 0) {
            char *save = NULL;
            if (n < 4 || parse_id(f[2], &v)) continue;
            for (char *m = strtok_r(f[3], ",", &save); m; m = strtok_r(NULL, ",", &save))
                if (strcmp(m, name) == 0) add_group(id, (gid_t)v);
        }
        if (fp) fclose(fp);
    }
    free(line);
    if (!found && !by_uid) { snprintf(err, errlen, "unknown user: %s", buf); return -1; }
    if (!group_ok) { snprintf(err, errlen, "unknown group: %s", group); return -1; }
    id->uid = (uid_t)uid;
    id->gid = (gid_t)gid;
    add_group(id, id->gid);
    return 0;
}

/* ---------------------------------------------------------- killing and stdin */

/* "Every process of the VPS except the agent" (see the test-mode note at the top). */
static void kill_all(int sig) {
    if (pid1_mode) kill(-1, sig);
    else if (job.pid > 0) kill(-job.pid, sig);
}

/* Drop all buffered stdin for good (the job ended or closed its end of the pipe). */
static void stdin_kill(void) {
    close_fd(&job.in_fd);
    in.dead = 1;
    free(in.buf);
    in.buf = NULL;
    in.head = in.len = in.cap = 0;
}

/* Write as much buffered stdin as the pipe takes right now (our end is non-blocking). */
static void stdin_flush(void) {
    if (job.in_fd < 0) return;
    while (in.len > in.head) {
        size_t k = in.len - in.head;
        ssize_t w = write(job.in_fd, in.buf + in.head, k > 65536 ? 65536 : k);
        if (w > 0) { in.head += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) return;
        stdin_kill();       /* EPIPE: the job closed its stdin, nobody will read the rest */
        return;
    }
    in.head = in.len = 0;
    if (in.cap > (1u << 20)) { free(in.buf); in.buf = NULL; in.cap = 0; }  /* give back */
    if (in.eof) close_fd(&job.in_fd);
}

static void stdin_append(const unsigned char *p, size_t n) {
    if (in.dead || job.state == J_FINISHING || job.state == J_DONE) return;
    if (in.eof) { logmsg("stdin data after 'C' ignored"); return; }
    size_t pending = in.len - in.head;
    if (pending + n > STDIN_CAP) {
        if (!in.dropped) send_diag("stdin: more than 64 MiB buffered, dropping further input");
        in.dropped = 1;
        n = STDIN_CAP - pending;
    }
    if (n == 0) return;
    if (in.len + n > in.cap && in.head > 0) {        /* compact before growing */
        memmove(in.buf, in.buf + in.head, pending);
        in.len = pending;
        in.head = 0;
    }
    if (in.len + n > in.cap) {
        size_t cap = in.cap ? in.cap : 65536;
        while (cap < in.len + n) cap *= 2;
        unsigned char *nb = realloc(in.buf, cap);
        if (!nb) { send_diag("stdin: out of memory, dropping input"); return; }
        in.buf = nb;
        in.cap = cap;
    }
    memcpy(in.buf + in.len, p, n);
    in.len += n;
    stdin_flush();
}

/* ------------------------------------------------------------ job output and end */

/* Relay one read's worth (<= one frame) of a job pipe; closes the fd on EOF or error. */
static int relay_once(int *fd, unsigned char type) {
    unsigned char buf[PAYLOAD_MAX];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n > 0) { send_frame(type, buf, (size_t)n); return 1; }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    close_fd(fd);
    return 0;
}

/* Relay what is buffered in a job pipe, at most ~1 MiB (the largest pipe buffer): a
 * leftover like `yes &` refills it forever, and it must not keep us from killing it. */
static void drain(int *fd, unsigned char type) {
    for (int k = 0; k < 256 && *fd >= 0 && relay_once(fd, type); k++) {}
}

/* Send X once the job was reaped and both output pipes reached EOF (or force: timeout). */
static void maybe_finish(int force) {
    if (job.state != J_FINISHING || (!force && (job.out_fd >= 0 || job.err_fd >= 0))) return;
    if (job.out_fd >= 0 || job.err_fd >= 0) {
        send_diag("output pipes still open %d ms after the job ended; closing them", FINISH_MS);
        close_fd(&job.out_fd);
        close_fd(&job.err_fd);
    }
    int st = job.status;
    uint64_t cpu = (uint64_t)(job.ru.ru_utime.tv_sec + job.ru.ru_stime.tv_sec) * 1000000u
                 + (uint64_t)(job.ru.ru_utime.tv_usec + job.ru.ru_stime.tv_usec);
    send_exit(WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : 0,
              cpu, (uint64_t)job.ru.ru_maxrss);
    job.state = J_DONE;
}

/*
 * The job's process ended: take what it wrote, then SIGKILL every leftover (a background
 * `sleep 100 &` holds the pipes open and would delay EOF forever), and wait for EOF in the
 * main loop (J_FINISHING), where late output is still relayed and the leftovers reaped.
 */
static void job_ended(void) {
    drain(&job.out_fd, 'O');
    drain(&job.err_fd, 'E');
    kill_all(SIGKILL);
    stdin_kill();
    job.state = J_FINISHING;
    job.deadline = now_ms() + FINISH_MS;
    maybe_finish(0);
}

/* PID 1 reaps every child, orphans included; the job's status and rusage are kept. */
static void reap(void) {
    for (;;) {
        int st;
        struct rusage ru;
        pid_t p = wait4(-1, &st, WNOHANG, &ru);
        if (p < 0 && errno == EINTR) continue;
        if (p <= 0) return;
        if (p == job.pid && job.state == J_RUNNING) {
            job.status = st;
            job.ru = ru;
            job_ended();
        }
    }
}

/* ------------------------------------------------------------------ job start */

struct spec { char **argv, **env; const char *workdir; struct ident id; };

/*
 * Records are key:u8 + NUL-terminated string. Returns 1 with key and val set, 0 at the
 * end, -1 for an unterminated record. stop_key (W's 'd', -1 for none) ends the records:
 * it is returned with *i left at its data, which runs to the end of the payload.
 */
static int next_record(char *buf, size_t n, size_t *i, int stop_key, char *key, char **val) {
    if (*i >= n) return 0;
    *key = buf[(*i)++];
    *val = buf + *i;
    if ((unsigned char)*key == stop_key) return 1;
    char *nul = memchr(*val, '\0', n - *i);
    if (!nul) return -1;
    *i = (size_t)(nul - buf) + 1;
    return 1;
}

/* In the child: report a setup failure to the parent through the CLOEXEC pipe and die. */
static void __attribute__((noreturn, format(printf, 3, 4)))
child_fail(int errfd, int code, const char *fmt, ...) {
    unsigned char buf[1024];
    putle(buf, (uint32_t)code, 4);
    va_list ap;
    va_start(ap, fmt);
    size_t n = vfmt((char *)buf + 4, sizeof buf - 4, fmt, ap);
    va_end(ap);
    while (write(errfd, buf, 4 + n) < 0 && errno == EINTR) {}
    _exit(code);
}

static void __attribute__((noreturn))
exec_child(struct spec *s, int in_r, int out_w, int err_w, int errfd) {
    setsid();    /* own session and process group: no controlling tty, pgid = job pid */
    if (dup2(in_r, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0)
        child_fail(errfd, 126, "dup2: %s", strerror(errno));
    /* Every fd >= 3 closes at exec: ours are all O_CLOEXEC already, this also catches any
     * inherited from runc, and the error pipe stays usable until the exec itself. */
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0)       /* Linux < 5.11 */
        for (int fd = 3; fd < 65536; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (s->workdir) {
        if (chdir(s->workdir) != 0)
            child_fail(errfd, 126, "chdir: %s: %s", s->workdir, strerror(errno));
    } else if (chdir(s->id.home) != 0 && chdir("/") != 0) {
        child_fail(errfd, 126, "chdir: /: %s", strerror(errno));
    }
    /* Groups first, uid last: after setuid we are no longer allowed to change them. */
    if (setgroups((size_t)s->id.ngroups, s->id.groups) != 0)
        child_fail(errfd, 126, "setgroups: %s", strerror(errno));
    if (setgid(s->id.gid) != 0)
        child_fail(errfd, 126, "setgid %u: %s", (unsigned)s->id.gid, strerror(errno));
    if (setuid(s->id.uid) != 0)
        child_fail(errfd, 126, "setuid %u: %s", (unsigned)s->id.uid, strerror(errno));
    /* The agent ignores SIGPIPE and blocks the signals it reads from its signalfd; both
     * would be inherited across exec, so reset every disposition and the mask. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    environ = s->env;    /* glibc's execvpe searches the PATH of environ, not of envp */
    execvpe(s->argv[0], s->argv, s->env);
    int e = errno;
    child_fail(errfd, e == ENOENT ? 127 : 126, "exec: %s: %s", s->argv[0], strerror(e));
}

/* Where the started job began (exec_child's chdir choice), for relative collect patterns;
 * empty while no job was started, and then relative patterns are relative to "/". */
static char job_cwd[4096];

static void remember_cwd(const struct spec *s) {
    struct stat st;
    char here[4096] = "";
    const char *dir = s->workdir ? s->workdir
                    : stat(s->id.home, &st) == 0 && S_ISDIR(st.st_mode) ? s->id.home : "/";
    /* A relative workdir was relative to our own cwd (runc's "/"; anything in test mode). */
    if (dir[0] != '/' && !getcwd(here, sizeof here)) here[0] = '\0';
    size_t n = strlen(here);
    if (n + 1 + strlen(dir) >= sizeof job_cwd) { snprintf(job_cwd, sizeof job_cwd, "/"); return; }
    memcpy(job_cwd, here, n);
    if (dir[0] != '/') job_cwd[n++] = '/';
    memcpy(job_cwd + n, dir, strlen(dir) + 1);
}

/* The job could not be started: D then X with 126/127, and the job counts as done. */
static void start_failed(int code, const char *msg) {
    send_diag("%s", msg);
    send_exit(code, 0, 0, 0);
    job.state = J_DONE;
    stdin_kill();
}

static int has_var(char **env, int n, const char *prefix) {
    for (int i = 0; i < n; i++)
        if (strncmp(env[i], prefix, strlen(prefix)) == 0) return 1;
    return 0;
}

static void handle_job(const unsigned char *payload, size_t n) {
    if (job.state != J_NONE) { send_diag("job already started"); return; }
    job.state = J_DONE;    /* only one J is ever accepted, even if this one fails */

    static struct spec s;  /* static: struct ident is large */
    char err[1200], *copy = malloc(n + 1), *home = NULL, *val, key;
    const char *user = NULL;
    int argc = 0, envc = 0, r, p[8] = { -1, -1, -1, -1, -1, -1, -1, -1 };
    s.argv = calloc(n / 2 + 2, sizeof(char *));   /* every record is >= 2 bytes */
    s.env = calloc(n / 2 + 4, sizeof(char *));
    s.workdir = NULL;
#define JFAIL(msg) do { start_failed(126, (msg)); goto out; } while (0)
    if (!copy || !s.argv || !s.env) JFAIL("out of memory");
    memcpy(copy, payload, n);
    copy[n] = '\0';
    for (size_t i = 0; (r = next_record(copy, n, &i, -1, &key, &val)) > 0;) {
        switch (key) {
        case 'a': s.argv[argc++] = val; break;
        case 'e': s.env[envc++] = val; break;
        case 'w': s.workdir = val; break;
        case 'u': user = val; break;
        default: logmsg("job spec: unknown record key 0x%02x ignored", (unsigned char)key);
        }
    }
    if (r < 0) JFAIL("invalid job spec: unterminated record");
    if (argc == 0) JFAIL("invalid job spec: no argv");
    if (resolve_user(user, &s.id, err, sizeof err) != 0) JFAIL(err);
    if (!has_var(s.env, envc, "PATH=")) s.env[envc++] = DEFAULT_PATH;
    if (!has_var(s.env, envc, "HOME=")) {
        if (asprintf(&home, "HOME=%s", s.id.home) < 0) { home = NULL; JFAIL("out of memory"); }
        s.env[envc++] = home;
    }

    /* p[0..1] stdin, p[2..3] stdout, p[4..5] stderr, p[6..7] exec error report. */
    const char *what = "pipe";
    for (int i = 0; i < 4; i++)
        if (pipe2(p + 2 * i, O_CLOEXEC) != 0) goto sys_fail;
    what = "fork";
    pid_t pid = fork();
    if (pid < 0) goto sys_fail;
    if (pid == 0) exec_child(&s, p[0], p[3], p[5], p[7]);
    close_fd(&p[0]);
    close_fd(&p[3]);
    close_fd(&p[5]);
    close_fd(&p[7]);

    /* Blocks only until exec: on success the CLOEXEC write end closes and we read EOF. */
    unsigned char rep[1024];
    ssize_t got = 0, rd;
    while ((rd = read(p[6], rep + got, sizeof rep - 1 - (size_t)got)) != 0) {
        if (rd < 0 && errno == EINTR) continue;
        if (rd < 0) break;
        got += rd;
    }
    if (got >= 4) {
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        rep[got] = '\0';
        start_failed((int)get32(rep), (char *)rep + 4);
        goto out;
    }
    job.pid = pid;
    job.state = J_RUNNING;
    remember_cwd(&s);
    /* Our ends are non-blocking; the job's ends stay blocking, as programs expect. */
    job.in_fd = p[1]; job.out_fd = p[2]; job.err_fd = p[4];
    p[1] = p[2] = p[4] = -1;
    fcntl(job.in_fd, F_SETFL, O_NONBLOCK);
    fcntl(job.out_fd, F_SETFL, O_NONBLOCK);
    fcntl(job.err_fd, F_SETFL, O_NONBLOCK);
    unsigned char pidle[4];
    putle(pidle, (uint32_t)pid, 4);
    send_frame('S', pidle, 4);
    stdin_flush();        /* stdin that came before J; closes at once after an early C */
    goto out;
sys_fail:
    snprintf(err, sizeof err, "%s: %s", what, strerror(errno));
    start_failed(126, err);
#undef JFAIL
out:
    for (int i = 0; i < 8; i++) close_fd(&p[i]);
    free(copy);
    free(s.argv);
    free(s.env);
    free(home);
}

/* ------------------------------------------------------------------ file write */

/* Answer a W: i32 errno (0 = ok) + message (empty on success). */
static void __attribute__((format(printf, 2, 3))) send_wresult(int err, const char *fmt, ...) {
    unsigned char buf[PAYLOAD_MAX];
    putle(buf, (uint32_t)err, 4);
    va_list ap;
    va_start(ap, fmt);
    size_t n = vfmt((char *)buf + 4, sizeof buf - 4, fmt, ap);
    va_end(ap);
    send_frame('w', buf, 4 + n);
}

/* mkdir -p of every parent of path (intermediate symlinks are followed: we are inside the
 * VPS, so they cannot lead outside it). Returns 0 or an errno, with the culprit in failed. */
static int make_parents(const char *path, char *failed, size_t flen) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *s = strchr(buf + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = '\0';
        if (mkdir(buf, 0755) == 0) chmod(buf, 0755);   /* exactly 0755, whatever the umask */
        else if (errno != EEXIST) { snprintf(failed, flen, "%s", buf); return errno; }
        *s = '/';
    }
    return 0;
}

static void handle_write(const unsigned char *payload, size_t n) {
    char *copy = malloc(n + 1), *path = NULL, *owner = NULL, *mode_s = NULL, *val, key;
    char failed[4096], err[1200];
    const unsigned char *data = NULL;
    size_t dlen = 0;
    int append = 0, fd = -1, e, r;
    unsigned long mode = 0644;
    static struct ident oid;
    struct stat st;
#define WFAIL(e, ...) do { send_wresult((e), __VA_ARGS__); goto out; } while (0)
    if (!copy) WFAIL(ENOMEM, "out of memory");
    memcpy(copy, payload, n);
    copy[n] = '\0';
    for (size_t i = 0; (r = next_record(copy, n, &i, 'd', &key, &val)) > 0;) {
        switch (key) {
        case 'd': data = payload + i; dlen = n - i; i = n; break;   /* data to the end */
        case 'p': path = val; break;
        case 'm': mode_s = val; break;
        case 'o': owner = val; break;
        case 'A': append = 1; break;
        default: logmsg("write request: unknown record key 0x%02x ignored", (unsigned char)key);
        }
    }
    if (r < 0) WFAIL(EINVAL, "invalid write request: unterminated record");
    if (mode_s && (!*mode_s || strspn(mode_s, "01234567") != strlen(mode_s) ||
                   (mode = strtoul(mode_s, NULL, 8)) > 07777))
        WFAIL(EINVAL, "invalid mode: %s", mode_s);
    if (!path || path[0] != '/' || strlen(path) >= sizeof failed)
        WFAIL(EINVAL, "invalid path: %s", path ? path : "(missing)");
    if (owner && resolve_user(owner, &oid, err, sizeof err) != 0) WFAIL(EINVAL, "%s", err);
    if ((e = make_parents(path, failed, sizeof failed)) != 0)
        WFAIL(e, "mkdir %s: %s", failed, strerror(e));
    /* O_NOFOLLOW: never follow a symlink planted as the final component. O_NONBLOCK: a
     * planted FIFO must not hang the agent in open(); non-regular files are refused. */
    fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK |
                    (append ? O_APPEND : O_TRUNC), (mode_t)mode);
    if (fd < 0) WFAIL(errno, "open %s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        WFAIL(EINVAL, "open %s: not a regular file", path);
    /* chown before chmod: chown clears the setuid/setgid bits, even when root does it. */
    if (owner && fchown(fd, oid.uid, oid.gid) != 0)
        WFAIL(errno, "chown %s: %s", path, strerror(errno));
    if (fchmod(fd, (mode_t)mode) != 0) WFAIL(errno, "chmod %s: %s", path, strerror(errno));
    while (dlen > 0) {
        ssize_t w = write(fd, data, dlen);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) WFAIL(errno, "write %s: %s", path, strerror(errno));
        data += w;
        dlen -= (size_t)w;
    }
    e = close(fd) == 0 ? 0 : errno;
    fd = -1;
    if (e) WFAIL(e, "close %s: %s", path, strerror(e));
    send_wresult(0, "%s", "");
#undef WFAIL
out:
    if (fd >= 0) close(fd);
    free(copy);
}

/* ------------------------------------------------------------- file collection */

/*
 * G: collect the files matching glob patterns and stream them to the host, each as one F
 * frame (path, size, mode) and its content in B frames, then one Z frame (counts, truncated
 * flag, text listing what was skipped). It runs synchronously in the agent (normally after
 * the job ended) and every step is bounded, so a file planted by the job cannot hang it:
 *  - every match is lstat()ed first: a symlink is reported and never followed, a directory
 *    is walked with nftw(FTW_PHYS) (symlinks met there are reported, never followed), and
 *    anything but a regular file (FIFO, device, socket) is reported and never even opened;
 *  - the open itself is O_NOFOLLOW|O_NONBLOCK and is checked again with fstat (a regular
 *    file, the same inode as the lstat) in case a still-running job swapped the path;
 *  - a walk does not enter directories of another filesystem (/proc, /sys, /dev, ...).
 * Symlinks in the directory part of a pattern are resolved by the kernel, but inside the
 * VPS's mount namespace: they can only lead to files of the VPS, never to the host's.
 *
 * Sizes: a file up to COLLECT_SMALL (1 MiB) is read whole into memory first, so its F size is
 * exactly the number of bytes that follow (a file that grew since fstat is cut at its fstat
 * size). A bigger file is streamed: F carries the fstat size and at most that many bytes
 * follow; if it shrank or grew meanwhile the Z text says so ("changed PATH: ...").
 */

#define Z_FIXED       13                      /* u32 files + u64 bytes + u8 truncated */
#define NOTES_MAX     (PAYLOAD_MAX - Z_FIXED) /* the Z text must fit in the same frame */
#define NOTES_RESERVE 64                      /* kept for the "(N more entries ...)" line */
#define PATH_ROOM     (PAYLOAD_MAX - 64)      /* longest path an F header can carry */
#define WALK_FDS      16                      /* directory fds nftw may keep open */

struct devino { dev_t dev; ino_t ino; int used; };

static struct {
    uint64_t budget;         /* content bytes that may still be sent (n minus bytes sent) */
    uint64_t max_files;      /* f */
    uint32_t files;          /* F frames sent */
    uint64_t bytes;          /* content bytes sent in B frames */
    int truncated;           /* something was left out because of a cap */
    int stop;                /* the file cap was hit: end the whole collection */
    dev_t walk_dev;          /* device of the directory being walked */
    unsigned char *buf;      /* COLLECT_SMALL bytes, for whole-file reads */
    char notes[NOTES_MAX];   /* Z text so far */
    size_t nlen;
    unsigned omitted;        /* notes that did not fit */
    struct devino *seen;     /* open-addressing hash set of every inode met */
    size_t nseen, seen_cap;  /* seen_cap is 0 or a power of two */
} col;

/* One line of the Z text. Newlines in names become '?', so it stays one entry per line. */
static void __attribute__((format(printf, 1, 2))) note(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    size_t n = vfmt(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r') line[i] = '?';
    line[n++] = '\n';
    if (col.nlen + n > NOTES_MAX - NOTES_RESERVE) { col.omitted++; return; }
    memcpy(col.notes + col.nlen, line, n);
    col.nlen += n;
}

static size_t seen_slot(const struct devino *t, size_t cap, dev_t dev, ino_t ino) {
    uint64_t h = (uint64_t)ino * 0x9e3779b97f4a7c15ull ^ (uint64_t)dev;
    size_t i = (size_t)(h ^ (h >> 29)) & (cap - 1);
    while (t[i].used && (t[i].dev != dev || t[i].ino != ino)) i = (i + 1) & (cap - 1);
    return i;
}

/* Records an inode; 1 if it was met before (overlapping patterns or walks, hard links), so
 * every file is sent, and every symlink reported, at most once. */
static int seen_before(const struct stat *st) {
    if (col.nseen * 2 >= col.seen_cap) {       /* grow at half load */
        size_t cap = col.seen_cap ? col.seen_cap * 2 : 1024;
        struct devino *t = calloc(cap, sizeof *t);
        if (!t) return 0;   /* out of memory: at worst a file is sent twice, within the caps */
        for (size_t i = 0; i < col.seen_cap; i++)
            if (col.seen[i].used)
                t[seen_slot(t, cap, col.seen[i].dev, col.seen[i].ino)] = col.seen[i];
        free(col.seen);
        col.seen = t;
        col.seen_cap = cap;
    }
    size_t i = seen_slot(col.seen, col.seen_cap, st->st_dev, st->st_ino);
    if (col.seen[i].used) return 1;
    col.seen[i] = (struct devino){ st->st_dev, st->st_ino, 1 };
    col.nseen++;
    return 0;
}

static const char *file_kind(mode_t m) {
    return S_ISFIFO(m) ? "FIFO" : S_ISCHR(m) ? "character device" : S_ISBLK(m) ? "block device"
         : S_ISSOCK(m) ? "socket" : S_ISDIR(m) ? "directory" : "not a regular file";
}

/* F: records p (path), s (size, decimal), m (mode, octal). path is <= PATH_ROOM bytes. */
static void send_file_header(const char *path, uint64_t size, mode_t mode) {
    char buf[PAYLOAD_MAX];
    size_t n = 0, len = strlen(path);
    buf[n++] = 'p';
    memcpy(buf + n, path, len + 1);      /* with its NUL */
    n += len + 1;
    n += (size_t)snprintf(buf + n, 32, "s%llu", (unsigned long long)size) + 1;
    n += (size_t)snprintf(buf + n, 32, "m%o", (unsigned)(mode & 07777)) + 1;
    send_frame('F', buf, n);
}

static void skip_over_budget(const char *path, uint64_t size) {
    col.truncated = 1;
    note("skipped %s: over the size cap (%llu bytes, %llu left)", path,
         (unsigned long long)size, (unsigned long long)col.budget);
}

/* Sends one file if it is a regular file that fits the caps; else says why not in Z. */
static void collect_file(const char *path, const struct stat *lst) {
    if (seen_before(lst)) return;
    if (S_ISLNK(lst->st_mode)) { note("skipped %s: symlink", path); return; }
    if (!S_ISREG(lst->st_mode)) { note("skipped %s: %s", path, file_kind(lst->st_mode)); return; }
    if (col.files >= col.max_files) {
        col.truncated = 1;
        col.stop = 1;
        note("skipped %s: over the file count cap (%llu); collection stopped", path,
             (unsigned long long)col.max_files);
        return;
    }
    if (strlen(path) > PATH_ROOM) { note("skipped %.200s...: path too long", path); return; }
    if ((uint64_t)lst->st_size > col.budget) {
        skip_over_budget(path, (uint64_t)lst->st_size);
        return;
    }

    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { note("error %s: open: %s", path, strerror(errno)); return; }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_dev != lst->st_dev ||
        st.st_ino != lst->st_ino) {
        note("skipped %s: replaced while being collected", path);
        close(fd);
        return;
    }
    uint64_t size = (uint64_t)st.st_size, sent = 0;
    if (size > col.budget) { skip_over_budget(path, size); close(fd); return; }

    if (size <= COLLECT_SMALL) {
        /* Whole file into memory first: F then carries the exact byte count. */
        size_t got = 0;
        while (got < size) {
            ssize_t r = read(fd, col.buf + got, (size_t)size - got);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) { note("error %s: read: %s", path, strerror(errno)); close(fd); return; }
            if (r == 0) break;                    /* shrank since fstat: send what is there */
            got += (size_t)r;
        }
        send_file_header(path, got, st.st_mode);
        for (size_t off = 0; off < got; off += PAYLOAD_MAX)
            send_frame('B', col.buf + off, got - off < PAYLOAD_MAX ? got - off : PAYLOAD_MAX);
        sent = got;
    } else {
        /* Streamed: F carries the fstat size, at most that many bytes follow. */
        unsigned char chunk[PAYLOAD_MAX];
        ssize_t r = 0;
        send_file_header(path, size, st.st_mode);
        while (sent < size) {
            size_t want = size - sent < sizeof chunk ? (size_t)(size - sent) : sizeof chunk;
            r = read(fd, chunk, want);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            send_frame('B', chunk, (size_t)r);
            sent += (size_t)r;
        }
        if (sent < size && r < 0)
            note("error %s: read: %s after %llu of %llu bytes; sent %llu bytes", path,
                 strerror(errno), (unsigned long long)sent, (unsigned long long)size,
                 (unsigned long long)sent);
        else if (sent < size)
            note("changed %s: shrank while read; sent %llu of %llu bytes", path,
                 (unsigned long long)sent, (unsigned long long)size);
        else if (read(fd, chunk, 1) > 0)
            note("changed %s: grew while read; sent its first %llu bytes", path,
                 (unsigned long long)size);
    }
    close(fd);
    col.files++;
    col.bytes += sent;
    col.budget -= sent;
}

/* nftw callback (FTW_PHYS: symlinks come as FTW_SL, never followed). */
static int walk_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    if (flag == FTW_D || flag == FTW_DNR) {
        if (ftw->level > 0) {        /* the walk's root was checked by collect_match */
            if (sb->st_dev != col.walk_dev) {
                note("skipped %s: another filesystem, not walked", path);
                return FTW_SKIP_SUBTREE;
            }
            if (seen_before(sb)) return FTW_SKIP_SUBTREE;   /* walked already */
        }
        if (flag == FTW_DNR) note("error %s: cannot read directory", path);
    } else if (flag == FTW_NS) {
        note("error %s: cannot stat", path);
    } else {
        collect_file(path, sb);      /* FTW_F (any non-directory) or FTW_SL */
    }
    return col.stop ? FTW_STOP : FTW_CONTINUE;
}

/* Lexical clean-up of a glob result: "//" and "/./" collapse, a trailing "/" or "/." goes.
 * ".." stays: removing it would change the meaning when the component before is a symlink. */
static void tidy_path(char *p) {
    char *w = p;
    for (const char *r = p; *r;) {
        if (r[0] == '/' && r[1] == '/') { r++; continue; }
        if (r[0] == '/' && r[1] == '.' && (r[2] == '/' || r[2] == '\0')) { r += 2; continue; }
        *w++ = *r++;
    }
    *w = '\0';
    while (w - p > 1 && w[-1] == '/') *--w = '\0';
    if (!*p) { p[0] = '/'; p[1] = '\0'; }  /* was "/" or "/.": at least 2 bytes long */
}

/* One glob result: a file (or something to report), or a directory to walk. */
static void collect_match(char *path) {
    struct stat st;
    tidy_path(path);
    if (lstat(path, &st) != 0) { note("error %s: %s", path, strerror(errno)); return; }
    if (!S_ISDIR(st.st_mode)) { collect_file(path, &st); return; }
    if (seen_before(&st)) return;            /* this directory was walked already */
    col.walk_dev = st.st_dev;
    if (nftw(path, walk_entry, WALK_FDS, FTW_PHYS | FTW_ACTIONRETVAL) == -1)
        note("error %s: walk: %s", path, strerror(errno));
}

/* A relative pattern is relative to the job's working directory, whose name is escaped so
 * that glob takes it literally. Returns a malloc'ed absolute pattern, or NULL. */
static char *absolute_pattern(const char *pat) {
    if (pat[0] == '/') return strdup(pat);
    const char *base = job_cwd[0] ? job_cwd : "/";
    char *out = malloc(2 * strlen(base) + strlen(pat) + 2), *w = out;
    if (!out) return NULL;
    for (const char *b = base; *b; b++) {
        if (strchr("\\*?[", *b)) *w++ = '\\';
        *w++ = *b;
    }
    *w++ = '/';
    strcpy(w, pat);
    return out;
}

/* Strict decimal u64: digits only, no sign, no overflow. */
static int parse_u64(const char *s, uint64_t *out) {
    size_t len = s ? strlen(s) : 0;
    if (len == 0 || len > 20 || strspn(s, "0123456789") != len) return -1;
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (errno) return -1;
    *out = v;
    return 0;
}

/* Z: u32 files, u64 bytes, u8 truncated, then the notes. */
static void send_collected(void) {
    unsigned char buf[PAYLOAD_MAX];
    putle(buf, col.files, 4);
    putle(buf + 4, col.bytes, 8);
    buf[12] = (unsigned char)(col.truncated != 0);
    memcpy(buf + Z_FIXED, col.notes, col.nlen);
    size_t n = Z_FIXED + col.nlen;
    if (col.omitted)
        n += (size_t)snprintf((char *)buf + n, NOTES_RESERVE, "(%u more entries not listed)\n",
                              col.omitted);
    send_frame('Z', buf, n);
}

static void handle_collect(const unsigned char *payload, size_t n) {
    char *copy = malloc(n + 1), **pats = calloc(n / 2 + 1, sizeof(char *));
    char *max_bytes = NULL, *max_files = NULL, *val, key;
    size_t npat = 0;
    int r;
    free(col.seen);
    memset(&col, 0, sizeof col);
#define CFAIL(...) do { note(__VA_ARGS__); goto out; } while (0)
    if (!copy || !pats) CFAIL("error: out of memory");
    memcpy(copy, payload, n);
    copy[n] = '\0';
    for (size_t i = 0; (r = next_record(copy, n, &i, -1, &key, &val)) > 0;) {
        switch (key) {
        case 'g': pats[npat++] = val; break;
        case 'n': max_bytes = val; break;
        case 'f': max_files = val; break;
        default:
            logmsg("collect request: unknown record key 0x%02x ignored", (unsigned char)key);
        }
    }
    if (r < 0) CFAIL("invalid collect request: unterminated record");
    if (npat == 0) CFAIL("invalid collect request: no pattern");
    if (parse_u64(max_bytes, &col.budget) != 0)
        CFAIL("invalid collect request: max bytes: %s", max_bytes ? max_bytes : "(missing)");
    if (parse_u64(max_files, &col.max_files) != 0)
        CFAIL("invalid collect request: max files: %s", max_files ? max_files : "(missing)");
    if (col.max_files > UINT32_MAX) col.max_files = UINT32_MAX;   /* Z counts in a u32 */
    if (!(col.buf = malloc(COLLECT_SMALL))) CFAIL("error: out of memory");

    for (size_t k = 0; k < npat && !col.stop; k++) {
        if (!*pats[k]) { note("error: empty pattern"); continue; }
        char *full = absolute_pattern(pats[k]);
        if (!full) CFAIL("error: out of memory");
        glob_t g;
        int gr = glob(full, 0, NULL, &g);    /* sorted: deterministic order */
        if (gr == GLOB_NOMATCH) note("no match: %s", pats[k]);
        else if (gr != 0)
            note("error %s: glob: %s", pats[k], gr == GLOB_NOSPACE ? "out of memory" : "failed");
        for (size_t i = 0; gr == 0 && i < g.gl_pathc && !col.stop; i++)
            collect_match(g.gl_pathv[i]);
        globfree(&g);
        free(full);
    }
#undef CFAIL
out:
    send_collected();
    free(col.buf);
    free(col.seen);
    memset(&col, 0, sizeof col);
    free(pats);
    free(copy);
}

/* ------------------------------------------------------------ frames from host */

static void dispatch(unsigned char type, const unsigned char *p, size_t n) {
    uint32_t sig;
    switch (type) {
    case 'J': handle_job(p, n); break;
    case 'I': stdin_append(p, n); break;
    case 'C':   /* before J, it is applied when the job starts (see handle_job) */
        in.eof = 1;
        if (job.state == J_RUNNING && in.len == in.head) close_fd(&job.in_fd);
        break;
    case 'K':
        sig = n == 4 ? get32(p) : 0;
        if (sig < 1 || sig >= NSIG) logmsg("protocol error: bad K frame (length %zu)", n);
        else kill_all((int)sig);
        break;
    case 'W': handle_write(p, n); break;
    case 'G': handle_collect(p, n); break;
    case 'Q': {   /* where is the output? (asked after a restore) */
        unsigned char q[8];
        putle(q, output_total, 8);
        send_frame('q', q, sizeof q);
        break;
    }
    default: logmsg("protocol error: unknown frame type 0x%02x ignored", type);
    }
}

/*
 * Host frames accumulate in a growable buffer. The host promises frames <= 4096 bytes but
 * anything up to 1 MiB is accepted; a larger length is a protocol error and that many bytes
 * are skipped (hskip), which keeps the stream in sync.
 */
static unsigned char *hbuf;
static size_t hlen, hcap, hskip;

static void host_readable(void) {
    if (hcap - hlen < 65536) {    /* hlen < IN_FRAME_MAX + 5 here, so this is bounded */
        unsigned char *nb = realloc(hbuf, hlen + 65536);
        if (!nb) { logmsg("out of memory reading host frames"); return; }
        hbuf = nb;
        hcap = hlen + 65536;
    }
    ssize_t r = read(0, hbuf + hlen, hcap - hlen);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (r <= 0) {
        if (r < 0) logmsg("reading host frames: %s", strerror(errno));
        if (job.state == J_NONE) exit(0);    /* host gone before a job: nothing to do */
        host_open = 0;                       /* else keep running the job to its end */
        return;
    }
    hlen += (size_t)r;
    size_t off = 0;
    for (;;) {
        if (hskip) {
            size_t k = hlen - off < hskip ? hlen - off : hskip;
            off += k;
            hskip -= k;
            if (hskip) break;
        }
        if (hlen - off < 5) break;
        uint32_t len = get32(hbuf + off + 1);
        if (len > IN_FRAME_MAX) {
            logmsg("protocol error: frame type 0x%02x length %u exceeds 1 MiB, skipped",
                   hbuf[off], len);
            hskip = len;
            off += 5;
            continue;
        }
        if (hlen - off < 5 + (size_t)len) break;
        dispatch(hbuf[off], hbuf + off + 5, len);
        off += 5 + (size_t)len;
    }
    memmove(hbuf, hbuf + off, hlen - off);
    hlen -= off;
}

/* ----------------------------------------------------------------------- main */

/* Loopback up in the VPS's own network namespace (the host makes the namespace; doing this here
 * spares it a helper process per VPS). A restored VPS never runs this again: its host brings lo
 * up before CRIU reconnects its sockets. Best effort: without lo the job still runs. */
static void loopback_up(void) {
    int sk = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sk < 0) return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(sk, SIOCGIFFLAGS, &ifr) == 0 && !(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(sk, SIOCSIFFLAGS, &ifr) != 0) logmsg("loopback up: %s", strerror(errno));
    }
    close(sk);
}

/* CAP_NET_ADMIN opens nf_tables, xfrm, tc and module autoload to the VPS's root: the kernel
 * surface of most recent container escapes (docs/SECURITY.md). runc grants it to us only for
 * loopback_up(); drop it from every set, bounding set included (a root exec would regain it from
 * there), before any job process exists. A restored VPS keeps the sets CRIU dumped (dropped).
 * Returns 0 when the capability is gone from all five sets, -1 (errno set) otherwise. */
static int drop_net_admin(void) {
    if (prctl(PR_CAPBSET_DROP, CAP_NET_ADMIN, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER, CAP_NET_ADMIN, 0, 0) != 0 && errno != EINVAL) return -1;
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    const uint32_t bit = 1u << (CAP_NET_ADMIN % 32);
    const int word = CAP_NET_ADMIN / 32;
    if (syscall(SYS_capget, &hdr, data) != 0) return -1;
    data[word].effective &= ~bit;
    data[word].permitted &= ~bit;
    data[word].inheritable &= ~bit;
    if (syscall(SYS_capset, &hdr, data) != 0) return -1;
    /* Check, do not trust: the job must never start with it. */
    if (syscall(SYS_capget, &hdr, data) != 0) return -1;
    if (((data[word].effective | data[word].permitted | data[word].inheritable) & bit) ||
        prctl(PR_CAPBSET_READ, CAP_NET_ADMIN, 0, 0, 0) == 1 ||
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_ADMIN, 0, 0) == 1) {
        errno = EPERM;
        return -1;
    }
    return 0;
}

/* The VPS's seccomp filter, installed by the agent itself as its first act (RUNBOX_AGENT_SECCOMP:
 * the program as hex of struct sock_filter records). runc compiles the OCI profile with libseccomp
 * at every start (~30 ms of a VPS's create); the host instead reads the program runc compiled once
 * (runtime/oci/seccomp-bpf.ts) and hands it over here. No job process exists yet, the agent's own
 * code is trusted, and runc has set no_new_privs, so the result is the one runc would have made.
 * Returns 0 when there is none to install or it is in place; -1 (logged) when it cannot be: the
 * agent then exits, and the VPS never reports ready (fail closed). */
static int install_seccomp(void) {
    const char *hex = getenv("RUNBOX_AGENT_SECCOMP");
    if (!hex) return 0;
    size_t n = strlen(hex), rec = 2 * sizeof(struct sock_filter);
    if (n == 0 || n % rec != 0 || n / rec > BPF_MAXINSNS) { logmsg("seccomp: malformed program (%zu hex digits)", n); return -1; }
    unsigned short len = (unsigned short)(n / rec);
    unsigned char *bytes = malloc(n / 2);
    if (!bytes) { logmsg("seccomp: out of memory"); return -1; }
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char c = hex[2 * i + k];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (d < 0) { logmsg("seccomp: malformed program (not hex)"); free(bytes); return -1; }
            v = v * 16 + (unsigned)d;
        }
        bytes[i] = (unsigned char)v;
    }
    struct sock_fprog prog = { len, (struct sock_filter *)bytes };
    int rc = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
    int e = errno;
    free(bytes);
    if (rc != 0) { logmsg("seccomp: cannot install the filter: %s", strerror(e)); return -1; }
    unsetenv("RUNBOX_AGENT_SECCOMP");
    return 0;
}

/* /dev is a directory of the VPS's own layer, not a tmpfs (runtime/oci/spec.ts): POSIX shared
 * memory and semaphores need /dev/shm, sticky and writable by all, as a tmpfs would have been. */
static void dev_shm(void) {
    if (mkdir("/dev/shm", 01777) != 0 && errno != EEXIST) { logmsg("mkdir /dev/shm: %s", strerror(errno)); return; }
    if (chmod("/dev/shm", 01777) != 0) logmsg("chmod /dev/shm: %s", strerror(errno));
}

int main(void) {
    if (install_seccomp() != 0) return 1;
    /* fds 0-2 must be taken, or our pipes could land there and be clobbered by dup2. */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0) {
            int nfd = open("/dev/null", O_RDWR);
            if (nfd >= 0 && nfd != fd) { dup2(nfd, fd); close(nfd); }
        }
    job.in_fd = job.out_fd = job.err_fd = -1;
    const char *t = getenv("RUNBOX_AGENT_TEST");
    int test = t && strcmp(t, "1") == 0;
    pid1_mode = getpid() == 1 && !test;
    if (!pid1_mode) {
        if (!test) logmsg("not PID 1: only the job's process group will be signalled");
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);   /* adopt the job's orphans */
    }

    /* EPIPE instead of death when the job closes its stdin or the host goes away. */
    signal(SIGPIPE, SIG_IGN);
    /* Blocked signals are never dropped, even for PID 1; the signalfd delivers them. */
    sigset_t set;
    sigemptyset(&set);
    for (const int *sig = (const int[]){ SIGCHLD, SIGTERM, SIGINT, SIGHUP, 0 }; *sig; sig++)
        sigaddset(&set, *sig);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) { logmsg("signalfd: %s", strerror(errno)); return 1; }

    if (pid1_mode) {
        loopback_up();
        dev_shm();
        /* Kept only when the host says so (RUNBOX_VPS_TUN: a tun device needs it). Fail closed: a
         * VPS whose root could keep it never reports ready, so the host destroys it. */
        const char *keep = getenv("RUNBOX_AGENT_KEEP_NET_ADMIN");
        if (!(keep && strcmp(keep, "1") == 0) && drop_net_admin() != 0) {
            logmsg("cannot drop CAP_NET_ADMIN: %s", strerror(errno));
            return 1;
        }
    }
    send_frame('R', "runbox-agent/1", 14);

    for (;;) {
        struct pollfd pf[5];
        int n = 0, i_host = -1, i_sig, i_out = -1, i_err = -1, i_in = -1;
        if (host_open) { i_host = n; pf[n++] = (struct pollfd){ 0, POLLIN, 0 }; }
        i_sig = n; pf[n++] = (struct pollfd){ sfd, POLLIN, 0 };
        if (job.out_fd >= 0) { i_out = n; pf[n++] = (struct pollfd){ job.out_fd, POLLIN, 0 }; }
        if (job.err_fd >= 0) { i_err = n; pf[n++] = (struct pollfd){ job.err_fd, POLLIN, 0 }; }
        /* POLLOUT only while stdin is pending, or poll would spin on a writable pipe. */
        if (job.in_fd >= 0 && in.len > in.head) {
            i_in = n;
            pf[n++] = (struct pollfd){ job.in_fd, POLLOUT, 0 };
        }
        int timeout = -1;
        if (job.state == J_FINISHING) {
            int64_t left = job.deadline - now_ms();
            timeout = left < 0 ? 0 : left > 100 ? 100 : (int)left;
        }
        int r = poll(pf, (nfds_t)n, timeout);
        if (r < 0) {
            if (errno != EINTR) { logmsg("poll: %s", strerror(errno)); sleep(1); }
            continue;
        }
        const short ready = POLLIN | POLLHUP | POLLERR | POLLNVAL;
        if (i_out >= 0 && (pf[i_out].revents & ready)) relay_once(&job.out_fd, 'O');
        if (i_err >= 0 && (pf[i_err].revents & ready)) relay_once(&job.err_fd, 'E');
        if (i_in >= 0 && pf[i_in].revents) stdin_flush();
        if (pf[i_sig].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (si.ssi_signo == SIGCHLD) reap();
                else kill_all((int)si.ssi_signo);    /* SIGTERM/SIGINT/SIGHUP */
            }
        }
        if (i_host >= 0 && (pf[i_host].revents & ready)) host_readable();
        if (job.state == J_FINISHING) {
            if (now_ms() >= job.deadline) maybe_finish(1);
            else if (r == 0) kill_all(SIGKILL);      /* catch anything forked in a race */
            else maybe_finish(0);
        }
    }
}
