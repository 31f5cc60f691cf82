#!/usr/bin/env python3
"""Tests for build/runbox-agent, without containers (python3 stdlib only).

The agent runs as an ordinary child process with RUNBOX_AGENT_TEST=1, under which it signals
only the job's process group instead of kill(-1) (which, outside a pid namespace, would hit
every process we may signal). Frames follow runtime/agent/PROTOCOL.md.

Usage: python3 runtime/agent/test-agent.py [test-name-substring ...]
Build first: gcc -static -O2 -Wall -Wextra -Werror -o build/runbox-agent runtime/agent/agent.c
Some tests (user switch, chown) need root and are skipped otherwise.
"""
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(ROOT, "build", "runbox-agent")
TIMEOUT = 10.0


class Agent:
    def __init__(self, cmd=None, test_mode=True, pass_fds=()):
        env = dict(os.environ)
        env.pop("RUNBOX_AGENT_TEST", None)
        if test_mode:
            env["RUNBOX_AGENT_TEST"] = "1"
        self.p = subprocess.Popen(cmd or [AGENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, bufsize=0,
                                  pass_fds=pass_fds)
        self.frames = queue.Queue()
        self.stderr = b""
        self.wlock = threading.Lock()
        threading.Thread(target=self._read_frames, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_frames(self):
        buf = b""
        fd = self.p.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                self.frames.put(None)
                return
            buf += chunk
            while len(buf) >= 5:
                t, n = buf[0], struct.unpack("<I", buf[1:5])[0]
                if len(buf) < 5 + n:
                    break
                self.frames.put((chr(t), buf[5:5 + n]))
                buf = buf[5 + n:]

    def _read_stderr(self):
        while True:
            chunk = os.read(self.p.stderr.fileno(), 65536)
            if not chunk:
                return
            self.stderr += chunk

    def send(self, t, payload=b""):
        with self.wlock:
            self.p.stdin.write(t.encode() + struct.pack("<I", len(payload)) + payload)

    def send_raw(self, data):
        with self.wlock:
            self.p.stdin.write(data)

    def recv(self, timeout=TIMEOUT):
        f = self.frames.get(timeout=timeout)
        if f is None:
            raise EOFError("agent closed fd 1")
        return f

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def records(pairs):
    return b"".join(k.encode() + (v.encode() if isinstance(v, str) else v) + b"\0"
                    for k, v in pairs)


def job_spec(argv, env=(), user=None, workdir=None):
    pairs = [("a", a) for a in argv] + [("e", e) for e in env]
    if user is not None:
        pairs.append(("u", user))
    if workdir is not None:
        pairs.append(("w", workdir))
    return records(pairs)


def collect(agent, timeout=TIMEOUT):
    """Read frames until X; returns a dict with out, err, diags, pid, x, sizes."""
    res = {"out": bytearray(), "err": bytearray(), "diags": [], "pid": None, "x": None,
           "sizes": []}
    deadline = time.time() + timeout
    while True:
        t, p = agent.recv(timeout=max(0.1, deadline - time.time()))
        res["sizes"].append(5 + len(p))
        if t == "O":
            res["out"] += p
        elif t == "E":
            res["err"] += p
        elif t == "D":
            res["diags"].append(p.decode())
        elif t == "S":
            assert len(p) == 4, p
            res["pid"] = struct.unpack("<I", p)[0]
        elif t == "X":
            assert len(p) == 24, p
            res["x"] = struct.unpack("<iiQQ", p)
            res["out"], res["err"] = bytes(res["out"]), bytes(res["err"])
            return res
        else:
            raise AssertionError("unexpected frame %r %r" % (t, p))


def fresh(cmd=None, test_mode=True):
    a = Agent(cmd, test_mode)
    t, p = a.recv()
    assert (t, p) == ("R", b"runbox-agent/1"), (t, p)
    return a


def run(argv, stdin=None, close=True, **kw):
    a = fresh()
    try:
        a.send("J", job_spec(argv, **kw))
        if stdin is not None:
            for i in range(0, len(stdin), 4091):
                a.send("I", stdin[i:i + 4091])
        if close:
            a.send("C")
        return collect(a)
    finally:
        a.close()


def eq(got, want):
    assert got == want, "got %r, want %r" % (got, want)


def write_req(path, data, mode=None, owner=None, append=False):
    pairs = [("p", path)]
    if mode is not None:
        pairs.append(("m", mode))
    if owner is not None:
        pairs.append(("o", owner))
    if append:
        pairs.append(("A", ""))
    return records(pairs) + b"d" + data


def w_result(a):
    t, p = a.recv()
    eq(t, "w")
    return struct.unpack("<i", p[:4])[0], p[4:].decode()


# ------------------------------------------------------------------ tests

def test_ready_and_exit_code():
    r = run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    eq(r["out"], b"out\n")
    eq(r["err"], b"err\n")
    eq(r["x"][:2], (3, 0))
    assert r["pid"], "no S frame"


def test_stdin_relay():
    r = run(["cat"], stdin=b"hello stdin\n")
    eq(r["out"], b"hello stdin\n")
    eq(r["x"][:2], (0, 0))


def test_stdin_before_job():
    a = fresh()
    try:
        a.send("I", b"early ")
        a.send("I", b"bird\n")
        a.send("C")
        a.send("J", job_spec(["cat"]))
        r = collect(a)
        eq(r["out"], b"early bird\n")
    finally:
        a.close()


def test_stdin_large_roundtrip():
    data = os.urandom(300_000)
    r = run(["cat"], stdin=data)
    eq(len(r["out"]), len(data))
    assert r["out"] == data


def test_stdin_never_read():
    t0 = time.time()
    r = run(["sh", "-c", "sleep 0.2; echo done"], stdin=b"x" * 200_000)
    eq(r["out"], b"done\n")
    eq(r["x"][:2], (0, 0))
    assert time.time() - t0 < 5


def test_stdin_closed_by_job():
    # head exits after one line: the agent gets EPIPE on the rest and must not die.
    r = run(["head", "-n1"], stdin=b"line1\n" + b"y" * 500_000)
    eq(r["out"], b"line1\n")
    eq(r["x"][:2], (0, 0))


def test_kill_signal():
    a = fresh()
    try:
        a.send("J", job_spec(["sleep", "100"]))
        t, p = a.recv()
        eq(t, "S")
        a.send("K", struct.pack("<I", 9))
        r = collect(a, timeout=5)
        eq(r["x"][:2], (-1, 9))
    finally:
        a.close()


def test_sigterm_forwarded():
    a = fresh()
    try:
        a.send("J", job_spec(["sleep", "100"]))
        eq(a.recv()[0], "S")
        a.p.send_signal(signal.SIGTERM)
        r = collect(a, timeout=5)
        eq(r["x"][:2], (-1, 15))
        assert a.p.poll() is None, "agent must survive SIGTERM"
    finally:
        a.close()


def test_missing_binary():
    r = run(["/bin/definitely-not-here"])
    eq(r["x"][:2], (127, 0))
    eq(r["pid"], None)
    eq(r["diags"], ["exec: /bin/definitely-not-here: No such file or directory"])
    r = run(["definitely-not-here-either"])
    eq(r["x"][:2], (127, 0))


def test_not_executable():
    r = run(["/etc/passwd"])
    eq(r["x"][:2], (126, 0))
    assert r["diags"] and "Permission denied" in r["diags"][0], r["diags"]


def test_unknown_user():
    r = run(["true"], user="no-such-user-xyz")
    eq(r["diags"], ["unknown user: no-such-user-xyz"])
    eq(r["x"][:2], (126, 0))
    r = run(["true"], user="root:no-such-group-xyz")
    eq(r["diags"], ["unknown group: no-such-group-xyz"])


def need_root():
    if os.geteuid() != 0:
        raise SkipTest("needs root")


def test_user_nobody():
    need_root()
    r = run(["sh", "-c", "id -u; id -g; echo $HOME; pwd"], user="nobody")
    eq(r["out"], b"65534\n65534\n/nonexistent\n/\n")
    r = run(["id", "-u"], user="65534")
    eq(r["out"], b"65534\n")
    r = run(["sh", "-c", "id -u; id -g; id -G"], user="65534:12345")
    eq(r["out"], b"65534\n12345\n12345\n")
    r = run(["sh", "-c", "id -u; id -g"], user="4242")   # not in /etc/passwd: gid 0
    eq(r["out"], b"4242\n0\n")
    r = run(["sh", "-c", "id -u; id -g"], user="nobody:root")
    eq(r["out"], b"65534\n0\n")


def test_supplementary_groups():
    need_root()
    if not shutil.which("unshare"):
        raise SkipTest("needs unshare(1)")
    # Run the agent in a private mount namespace with a bind-mounted /etc/group in which
    # nobody is listed in two extra groups, so the host's /etc/group is never modified.
    d = tempfile.mkdtemp()
    try:
        g = d + "/group"
        with open(g, "w") as f:
            f.write(open("/etc/group").read().rstrip("\n") +
                    "\nrbx-one:x:4321:daemon,nobody\nrbx-two:x:4322:nobody\nrbx-no:x:4323:bin\n")
        wrapper = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/group && exec "$1"',
                   g, AGENT]
        a = fresh(wrapper)
        try:
            a.send("J", job_spec(["id", "-G"], user="nobody"))
            r = collect(a)
            eq(sorted(r["out"].split()), sorted([b"65534", b"4321", b"4322"]))
        finally:
            a.close()
        a = fresh(wrapper)
        try:   # an explicit group replaces the supplementary groups (runc semantics)
            a.send("J", job_spec(["id", "-G"], user="nobody:rbx-two"))
            r = collect(a)
            eq(r["out"], b"4322\n")
        finally:
            a.close()
    finally:
        shutil.rmtree(d)


def test_workdir():
    r = run(["pwd"], workdir="/tmp")
    eq(r["out"], b"/tmp\n")
    r = run(["pwd"])   # root's home
    eq(r["out"], (os.path.realpath("/root") + "\n").encode())
    r = run(["pwd"], workdir="/no/such/dir")
    eq(r["x"][:2], (126, 0))
    eq(r["diags"], ["chdir: /no/such/dir: No such file or directory"])


def test_env():
    r = run(["env"], env=["FOO=bar", "X=1=2"])
    got = sorted(r["out"].decode().splitlines())
    eq(got, sorted(["FOO=bar", "X=1=2", "HOME=/root",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]))
    # explicit PATH and HOME win; PATH is used for the lookup of argv[0]
    d = tempfile.mkdtemp()
    try:
        with open(os.path.join(d, "mytool"), "w") as f:
            f.write("#!/bin/sh\necho tool $HOME\n")
        os.chmod(os.path.join(d, "mytool"), 0o755)
        r = run(["mytool"], env=["PATH=%s:/bin:/usr/bin" % d, "HOME=/h"])
        eq(r["out"], b"tool /h\n")
        r = run(["mytool"])   # default PATH does not contain d
        eq(r["x"][:2], (127, 0))
    finally:
        shutil.rmtree(d)


def test_no_fd_leak():
    r = run(["sh", "-c", "ls /proc/$$/fd"])
    eq(r["out"], b"0\n1\n2\n")
    # an fd the agent itself inherited without CLOEXEC must not reach the job either
    rfd, wfd = os.pipe()
    try:
        a = Agent(pass_fds=(rfd,))
        try:
            eq(a.recv()[0], "R")
            a.send("J", job_spec(["sh", "-c", "ls /proc/$$/fd"]))
            eq(collect(a)["out"], b"0\n1\n2\n")
        finally:
            a.close()
    finally:
        os.close(rfd)
        os.close(wfd)


def test_file_write():
    d = tempfile.mkdtemp()
    try:
        path = d + "/sub/dir/file.txt"
        a = fresh()
        try:
            a.send("W", write_req(path, b"hello ", mode="640"))
            eq(w_result(a), (0, ""))
            a.send("W", write_req(path, b"world\n", append=True, mode="640"))
            eq(w_result(a), (0, ""))
            a.send("J", job_spec(["cat", path]))
            r = collect(a)
            eq(r["out"], b"hello world\n")
        finally:
            a.close()
        eq(oct(os.stat(path).st_mode & 0o7777), oct(0o640))
        eq(oct(os.stat(d + "/sub/dir").st_mode & 0o7777), oct(0o755))
        # overwrite truncates; default mode 644; binary content with NULs
        a = fresh()
        try:
            a.send("W", write_req(path, b"\0bin\0"))
            eq(w_result(a), (0, ""))
        finally:
            a.close()
        eq(open(path, "rb").read(), b"\0bin\0")
        eq(oct(os.stat(path).st_mode & 0o7777), oct(0o644))
        if os.geteuid() == 0:
            a = fresh()
            try:
                a.send("W", write_req(path, b"x", owner="nobody", mode="4755"))
                eq(w_result(a), (0, ""))
            finally:
                a.close()
            st = os.stat(path)
            eq((st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)), (65534, 65534, oct(0o4755)))
    finally:
        shutil.rmtree(d)


def test_file_write_errors():
    import errno
    d = tempfile.mkdtemp()
    try:
        os.symlink("/etc/hostname", d + "/link")
        os.mkfifo(d + "/fifo")
        a = fresh()
        try:
            a.send("W", write_req(d + "/link", b"pwned"))
            e, msg = w_result(a)
            eq(e, errno.ELOOP)
            a.send("W", write_req(d + "/fifo", b"x"))   # must not hang
            e, msg = w_result(a)
            assert e != 0, msg
            a.send("W", write_req("relative/path", b"x"))
            eq(w_result(a)[0], errno.EINVAL)
            a.send("W", write_req(d + "/f", b"x", mode="99"))
            eq(w_result(a)[0], errno.EINVAL)
            a.send("W", write_req(d + "/f", b"x", owner="no-such-user-xyz"))
            eq(w_result(a), (errno.EINVAL, "unknown user: no-such-user-xyz"))
            a.send("W", write_req(d, b"x"))
            eq(w_result(a)[0], errno.EISDIR)
            a.send("W", b"p" + d.encode())   # unterminated record
            eq(w_result(a)[0], errno.EINVAL)
        finally:
            a.close()
        assert open("/etc/hostname").read() != "pwned"
    finally:
        shutil.rmtree(d)


def test_background_leftovers():
    t0 = time.time()
    r = run(["sh", "-c", "sleep 100 & echo hi"])
    eq(r["out"], b"hi\n")
    eq(r["x"][:2], (0, 0))
    assert time.time() - t0 < 3, "X took %.1fs" % (time.time() - t0)
    out = subprocess.run(["pgrep", "-f", "^sleep 100$"], capture_output=True).stdout
    eq(out, b"")


def test_escaped_leftover_deadline():
    # In test mode a setsid'd process escapes kill(-pgid) and holds stdout open: the agent
    # must give up after its 5 s deadline, say so with a D, and still send X.
    t0 = time.time()
    r = run(["sh", "-c", "setsid sleep 30 & echo $!; sleep 0.3"])
    dt = time.time() - t0
    try:
        eq(r["x"][:2], (0, 0))
        assert 4.5 < dt < 7, dt
        eq(len(r["diags"]), 1)
        assert "still open" in r["diags"][0], r["diags"]
    finally:
        try:
            os.kill(int(r["out"].split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_flooding_leftover():
    # a leftover that writes forever must not keep X from arriving
    t0 = time.time()
    r = run(["sh", "-c", "yes & sleep 0.2"])
    eq(r["x"][:2], (0, 0))
    assert len(r["out"]) > 0
    assert time.time() - t0 < 2, "X took %.1fs" % (time.time() - t0)


def test_large_output():
    n = 200_000
    r = run(["seq", "1", str(n)])
    want = "".join("%d\n" % i for i in range(1, n + 1)).encode()
    assert len(want) > 1_000_000
    eq(len(r["out"]), len(want))
    assert r["out"] == want
    assert max(r["sizes"]) <= 4096, max(r["sizes"])
    r = run(["head", "-c", "1048576", "/dev/zero"])
    eq(r["out"], b"\0" * 1048576)
    assert max(r["sizes"]) <= 4096


def test_rusage():
    r = run(["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
    code, sig, cpu, rss = r["x"]
    eq((code, sig), (0, 0))
    assert cpu > 10_000, cpu       # busy loop: well over 10 ms
    assert 100 < rss < 1_000_000, rss


def test_second_job_and_after_exit():
    a = fresh()
    try:
        a.send("J", job_spec(["true"]))
        r = collect(a)
        eq(r["x"][:2], (0, 0))
        a.send("J", job_spec(["true"]))
        eq(a.recv(), ("D", b"job already started"))
        a.send("I", b"ignored")
        a.send("K", struct.pack("<I", 15))
        a.send("W", write_req("/tmp/runbox-agent-test-after", b"ok"))
        eq(w_result(a), (0, ""))
        os.unlink("/tmp/runbox-agent-test-after")
        a.p.stdin.close()            # host EOF after a job: agent stays up
        time.sleep(0.3)
        assert a.p.poll() is None
    finally:
        a.close()


def test_eof_before_job_exits():
    a = fresh()
    a.p.stdin.close()
    eq(a.p.wait(timeout=5), 0)


def test_protocol_robustness():
    a = fresh()
    try:
        a.send("Z", b"unknown type")
        a.send("K", b"\x01")                        # wrong length
        a.send("K", struct.pack("<I", 1000))        # bad signal
        big = 2 * 1024 * 1024
        a.send_raw(b"I" + struct.pack("<I", big))   # oversized: skipped
        a.send_raw(b"\xff" * big)
        a.send("I", b"after\n")                     # stream resynchronised
        a.send("J", b"a\0e")                        # argv "" then unterminated record
        r = collect(a)
        eq(r["x"][:2], (126, 0))
        eq(r["diags"], ["invalid job spec: unterminated record"])
        assert a.p.poll() is None
        assert b"exceeds 1 MiB" in a.stderr, a.stderr
    finally:
        a.close()
    a = fresh()
    try:
        a.send("I", b"ok\n")
        a.send("C")
        big = 100_000                                # a big but legal host frame
        a.send("J", records([("a", "sh"), ("a", "-c"), ("a", "cat; echo ${#X}"),
                             ("e", "X=" + "v" * big)]))
        r = collect(a)
        eq(r["out"], b"ok\n%d\n" % big)
    finally:
        a.close()
    r_empty = run([""])
    eq(r_empty["x"][:2], (127, 0))
    r = run(["true"], close=False)                   # no C at all: still finishes
    eq(r["x"][:2], (0, 0))


def test_stdin_cap():
    # 64 MiB + a bit to a job that never reads: the agent must drop the excess with a D.
    a = fresh()
    try:
        a.send("J", job_spec(["sleep", "100"]))
        eq(a.recv()[0], "S")
        chunk = b"z" * 4091
        total = 64 * 1024 * 1024 + 100_000
        msg = b"".join(b"I" + struct.pack("<I", 4091) + chunk for _ in range(256))
        sent = 0
        while sent < total:
            a.send_raw(msg)
            sent += 256 * 4091
        t, p = a.recv(timeout=20)
        eq(t, "D")
        assert b"64 MiB" in p, p
        a.send("K", struct.pack("<I", 9))
        r = collect(a)
        eq(r["x"][:2], (-1, 9))
    finally:
        a.close()


def test_real_pid1():
    """The agent as real PID 1 of a new pid namespace (no test mode): kill(-1) semantics."""
    need_root()
    if not shutil.which("unshare"):
        raise SkipTest("needs unshare(1)")
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", AGENT]

    def zombies_and_procs():
        return ("z=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l);"
                "n=$(ls -d /proc/[0-9]* | wc -l); echo zombies=$z procs=$n")

    a = fresh(cmd, test_mode=False)
    try:
        # orphans exit while the job runs: PID 1 must reap them; a setsid'd leftover
        # (own session, so not in the job's process group) must still be killed.
        script = ("for i in 1 2 3 4 5 6 7 8; do sh -c 'true &'; done; sleep 0.3; "
                  + zombies_and_procs() + "; setsid sleep 100 & echo pid=$$")
        a.send("J", job_spec(["sh", "-c", script]))
        t0 = time.time()
        r = collect(a)
        assert time.time() - t0 < 3
        eq(r["pid"], 2)
        # procs: agent, sh, the grep/ls pipeline members (wc, ...) - no zombies
        assert b"zombies=0 " in r["out"], r["out"]
        assert b"pid=2\n" in r["out"], r["out"]
        eq(r["x"][:2], (0, 0))
        a.send("W", write_req("/tmp/runbox-agent-pid1-test", b"x"))   # still serving
        eq(w_result(a), (0, ""))
        os.unlink("/tmp/runbox-agent-pid1-test")
        # the setsid'd sleep is gone although the agent is still alive
        time.sleep(0.1)
        assert a.p.poll() is None
        out = subprocess.run(["pgrep", "-f", "^sleep 100$"], capture_output=True).stdout
        eq(out, b"")
    finally:
        a.close()

    a = fresh(cmd, test_mode=False)
    try:   # SIGTERM to the agent (as `runc kill` does) reaches the job through kill(-1)
        a.send("J", job_spec(["sleep", "100"]))
        eq(a.recv()[0], "S")
        kids = open("/proc/%d/task/%d/children" % (a.p.pid, a.p.pid)).read().split()
        os.kill(int(kids[0]), signal.SIGTERM)
        r = collect(a, timeout=5)
        eq(r["x"][:2], (-1, 15))
        time.sleep(0.1)
        assert a.p.poll() is None, "agent (PID 1) must survive SIGTERM"
    finally:
        a.close()


class SkipTest(Exception):
    pass


def main():
    if not os.path.exists(AGENT):
        sys.exit("build the agent first: %s missing" % AGENT)
    only = sys.argv[1:]
    tests = [(k, v) for k, v in globals().items() if k.startswith("test_") and callable(v)]
    failed = 0
    for name, fn in tests:
        if only and not any(o in name for o in only):
            continue
        t0 = time.time()
        try:
            fn()
            print("PASS %-32s %.2fs" % (name, time.time() - t0))
        except SkipTest as e:
            print("SKIP %-32s %s" % (name, e))
        except Exception as e:
            failed += 1
            print("FAIL %-32s %s: %s" % (name, type(e).__name__, e))
    print("%s: %d failed" % ("FAILED" if failed else "OK", failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
