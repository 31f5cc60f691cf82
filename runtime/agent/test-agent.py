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


# ------------------------------------------------------------ file collection (G)

def collect_req(patterns, max_bytes=1 << 30, max_files=10_000):
    return records([("g", p) for p in patterns] +
                   [("n", str(max_bytes)), ("f", str(max_files))])


def parse_records(p):
    out = []
    while p:
        end = p.index(b"\0", 1)
        out.append((chr(p[0]), p[1:end].decode()))
        p = p[end + 1:]
    return out


def collected(a, timeout=TIMEOUT):
    """Reads F/B frames until Z. Returns (files by path, Z fields, notes, frame sizes)."""
    files, order, sizes = {}, [], []
    cur = None
    deadline = time.time() + timeout
    while True:
        t, p = a.recv(timeout=max(0.1, deadline - time.time()))
        sizes.append(5 + len(p))
        if t == "F":
            rec = dict(parse_records(p))
            eq(sorted(rec), ["m", "p", "s"])
            assert rec["p"] not in files, "sent twice: " + rec["p"]
            cur = {"size": int(rec["s"]), "mode": int(rec["m"], 8), "data": bytearray()}
            files[rec["p"]] = cur
            order.append(rec["p"])
        elif t == "B":
            assert cur is not None, "B before F"
            cur["data"] += p
        elif t == "Z":
            assert len(p) >= 13, p
            n, nbytes, trunc = struct.unpack("<IQB", p[:13])
            notes = p[13:].decode().splitlines()
            for path, f in files.items():   # the F size is exact for files <= 1 MiB
                eq((path, len(f["data"])), (path, f["size"]))
            eq(n, len(files))
            eq(nbytes, sum(len(f["data"]) for f in files.values()))
            assert max(sizes) <= 4096, max(sizes)
            return files, {"files": n, "bytes": nbytes, "truncated": trunc}, notes, order
        else:
            raise AssertionError("unexpected frame %r %r" % (t, p[:80]))


def do_collect(patterns, a=None, timeout=TIMEOUT, **kw):
    own = a is None
    a = a or fresh()
    try:
        a.send("G", collect_req(patterns, **kw))
        return collected(a, timeout)
    finally:
        if own:
            a.close()


def make_tree(d, spec):
    """spec: {relpath: bytes | ("mode", bytes) }"""
    for rel, v in spec.items():
        mode, data = v if isinstance(v, tuple) else (0o644, v)
        path = os.path.join(d, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)


def test_collect_basic():
    d = tempfile.mkdtemp()
    try:
        binary = os.urandom(100_000)
        make_tree(d, {"out/a.txt": (0o640, b"hello\n"), "out/sub/b.bin": (0o600, binary),
                      "out/.hidden": b"dot", "out/empty": b"",
                      "work/result.json": (0o755, b'{"ok":true}\n'), "work/other": b"no"})
        a = fresh()
        try:
            a.send("J", job_spec(["true"], workdir=d + "/work"))
            eq(collect(a)["x"][:2], (0, 0))
            files, z, notes, _ = do_collect([d + "/out", "result.json"], a)
        finally:
            a.close()
        eq(sorted(files), sorted([d + "/out/a.txt", d + "/out/sub/b.bin", d + "/out/.hidden",
                                  d + "/out/empty", d + "/work/result.json"]))
        eq(bytes(files[d + "/out/a.txt"]["data"]), b"hello\n")
        eq(files[d + "/out/a.txt"]["mode"], 0o640)
        assert bytes(files[d + "/out/sub/b.bin"]["data"]) == binary
        eq(files[d + "/out/sub/b.bin"]["mode"], 0o600)
        eq(bytes(files[d + "/work/result.json"]["data"]), b'{"ok":true}\n')
        eq(files[d + "/work/result.json"]["mode"], 0o755)
        eq(files[d + "/out/empty"]["size"], 0)
        eq(z, {"files": 5, "bytes": 6 + 100_000 + 3 + 0 + 12, "truncated": 0})
        eq(notes, [])
    finally:
        shutil.rmtree(d)


def test_collect_relative_without_job():
    # no job ran: a relative pattern is relative to /
    files, z, notes, _ = do_collect(["etc/passwd", "etc/no-such-file-xyz"])
    eq(list(files), ["/etc/passwd"])
    eq(bytes(files["/etc/passwd"]["data"]), open("/etc/passwd", "rb").read())
    eq(notes, ["no match: etc/no-such-file-xyz"])


def test_collect_glob_escapes_workdir():
    # the job's workdir is taken literally, even with glob metacharacters in its name
    d = tempfile.mkdtemp()
    try:
        make_tree(d, {"w[1]*/r.txt": b"x", "w1x/r.txt": b"wrong"})
        a = fresh()
        try:
            a.send("J", job_spec(["true"], workdir=d + "/w[1]*"))
            collect(a)
            files, z, notes, _ = do_collect(["*.txt"], a)
        finally:
            a.close()
        eq(list(files), [d + "/w[1]*/r.txt"])
    finally:
        shutil.rmtree(d)


def test_collect_dedupe_and_paths():
    d = tempfile.mkdtemp()
    try:
        make_tree(d, {"out/a": b"a", "out/sub/b": b"b"})
        os.link(d + "/out/a", d + "/out/hardlink")
        pats = [d + "//out/./a", d + "/out/a", d + "/out/sub/", d + "/out", d + "/out/*",
                d + "/out/sub/b"]
        files, z, notes, _ = do_collect(pats)
        # every file once; the hard link is the same file as a
        eq(sorted(files), [d + "/out/a", d + "/out/sub/b"])
        eq(z["files"], 2)
        eq(notes, [])
    finally:
        shutil.rmtree(d)


def test_collect_symlinks_never_followed():
    d = tempfile.mkdtemp()
    try:
        make_tree(d, {"secret": b"HOST-SECRET", "out/ok.txt": b"fine"})
        for name, target in [("shadow", "/etc/shadow"), ("root", "/proc/1/root"),
                             ("secret", d + "/secret"), ("rel", "../secret"),
                             ("dangling", "/no/such/target"), ("etcdir", "/etc")]:
            os.symlink(target, d + "/out/" + name)
        os.makedirs(d + "/out/deep")
        os.symlink(d + "/secret", d + "/out/deep/link")
        files, z, notes, _ = do_collect([d + "/out", d + "/out/*", d + "/out/secret"])
        eq(list(files), [d + "/out/ok.txt"])
        for f in files.values():
            assert b"HOST-SECRET" not in f["data"]
        want = sorted("skipped %s/out/%s: symlink" % (d, n) for n in
                      ["shadow", "root", "secret", "rel", "dangling", "etcdir", "deep/link"])
        eq(sorted(notes), want)     # each reported exactly once
        eq(z["truncated"], 0)
    finally:
        shutil.rmtree(d)


def test_collect_caps():
    d = tempfile.mkdtemp()
    try:
        make_tree(d, {"out/big": b"B" * 50_000, "out/s1": b"1" * 100, "out/s2": b"2" * 200})
        # the big file does not fit: skipped, smaller ones still come through
        files, z, notes, _ = do_collect([d + "/out/*"], max_bytes=1000)
        eq(sorted(files), [d + "/out/s1", d + "/out/s2"])
        eq(z, {"files": 2, "bytes": 300, "truncated": 1})
        eq(notes, ["skipped %s/out/big: over the size cap (50000 bytes, 1000 left)" % d])
        # a budget that exactly fits
        files, z, notes, _ = do_collect([d + "/out/*"], max_bytes=50_300)
        eq((z["files"], z["truncated"], notes), (3, 0, []))
        # zero budget: empty files still fit
        make_tree(d, {"out/zero": b""})
        files, z, notes, _ = do_collect([d + "/out/*"], max_bytes=0)
        eq((list(files), z["truncated"], len(notes)), ([d + "/out/zero"], 1, 3))
        # file count cap
        for i in range(5):
            make_tree(d, {"many/f%d" % i: b"x"})
        files, z, notes, _ = do_collect([d + "/many/*"], max_files=2)
        eq(sorted(files), [d + "/many/f0", d + "/many/f1"])   # glob results are sorted
        eq((z["files"], z["truncated"]), (2, 1))
        eq(notes, ["skipped %s/many/f2: over the file count cap (2); collection stopped" % d])
        files, z, notes, _ = do_collect([d + "/many/*"], max_files=5)
        eq((z["files"], z["truncated"], notes), (5, 0, []))
        files, z, notes, _ = do_collect([d + "/many/f0", d + "/out"], max_files=0)
        eq((z["files"], z["truncated"], len(notes)), (0, 1, 1))
    finally:
        shutil.rmtree(d)


def test_collect_special_files_no_hang():
    import socket
    d = tempfile.mkdtemp()
    try:
        os.makedirs(d + "/out")
        os.mkfifo(d + "/out/fifo")
        os.symlink("/dev/zero", d + "/out/zero")
        s = socket.socket(socket.AF_UNIX)
        s.bind(d + "/out/sock")
        make_tree(d, {"out/real": b"r"})
        t0 = time.time()
        files, z, notes, _ = do_collect([d + "/out", "/dev/zero", "/dev/null"])
        assert time.time() - t0 < 2
        s.close()
        eq(list(files), [d + "/out/real"])
        eq(sorted(notes), sorted(["skipped %s/out/fifo: FIFO" % d,
                                  "skipped %s/out/zero: symlink" % d,
                                  "skipped %s/out/sock: socket" % d,
                                  "skipped /dev/zero: character device",
                                  "skipped /dev/null: character device"]))
    finally:
        shutil.rmtree(d)


def test_collect_large_files():
    d = tempfile.mkdtemp()
    try:
        mib = 1024 * 1024
        contents = {"out/exact": os.urandom(mib), "out/over": os.urandom(mib + 1),
                    "out/big": os.urandom(3 * mib + 12345)}
        make_tree(d, contents)
        files, z, notes, _ = do_collect([d + "/out"], timeout=30)
        for rel, data in contents.items():
            f = files[d + "/" + rel]
            eq(f["size"], len(data))
            assert bytes(f["data"]) == data, rel
        eq((z["files"], z["bytes"], notes), (3, sum(map(len, contents.values())), []))
    finally:
        shutil.rmtree(d)


def test_collect_other_filesystem_not_walked():
    # /dev usually has /dev/pts, /dev/shm or /dev/mqueue mounted inside it
    mounts = [m for m in ("/dev/pts", "/dev/shm", "/dev/mqueue") if os.path.ismount(m)]
    if not mounts:
        raise SkipTest("no mount point under /dev")
    files, z, notes, _ = do_collect(["/dev"], max_bytes=0)
    for m in mounts:
        assert "skipped %s: another filesystem, not walked" % m in notes, notes


def test_collect_notes_capped():
    d = tempfile.mkdtemp()
    try:
        os.makedirs(d + "/out")
        for i in range(2000):
            os.symlink("/etc/passwd", d + "/out/link%04d" % i)
        files, z, notes, _ = do_collect([d + "/out"])
        eq(z["files"], 0)
        assert notes[-1].endswith("more entries not listed)"), notes[-1]
        listed = len(notes) - 1
        eq(notes[-1], "(%d more entries not listed)" % (2000 - listed))
        assert listed > 20
    finally:
        shutil.rmtree(d)


def test_collect_bad_requests():
    a = fresh()
    try:
        for payload, note_ in [
            (records([("n", "1"), ("f", "1")]), "invalid collect request: no pattern"),
            (records([("g", "/etc/passwd"), ("f", "1")]),
             "invalid collect request: max bytes: (missing)"),
            (records([("g", "/etc/passwd"), ("n", "-1"), ("f", "1")]),
             "invalid collect request: max bytes: -1"),
            (records([("g", "/etc/passwd"), ("n", "1")]),
             "invalid collect request: max files: (missing)"),
            (records([("g", "/etc/passwd"), ("n", "1"), ("f", "99999999999999999999")]),
             "invalid collect request: max files: 99999999999999999999"),
            (b"g/etc/passwd", "invalid collect request: unterminated record"),
            (records([("g", ""), ("n", "1"), ("f", "1")]), "error: empty pattern"),
        ]:
            a.send("G", payload)
            files, z, notes, _ = collected(a)
            eq((files, z, notes), ({}, {"files": 0, "bytes": 0, "truncated": 0}, [note_]))
        # unknown records are ignored; the agent keeps serving
        a.send("G", records([("x", "?"), ("g", "/etc/hostname"), ("n", "100000"), ("f", "5")]))
        files, z, notes, _ = collected(a)
        eq(list(files), ["/etc/hostname"])
        a.send("J", job_spec(["echo", "still alive"]))
        eq(collect(a)["out"], b"still alive\n")
    finally:
        a.close()


def test_collect_while_job_runs():
    d = tempfile.mkdtemp()
    try:
        a = fresh()
        try:
            a.send("J", job_spec(["sh", "-c", "echo data > out.txt; echo ready; sleep 100"],
                                 workdir=d))
            eq(a.recv()[0], "S")
            eq(a.recv(), ("O", b"ready\n"))
            files, z, notes, _ = do_collect(["out.txt"], a)
            eq(bytes(files[d + "/out.txt"]["data"]), b"data\n")
            a.send("K", struct.pack("<I", 9))
            eq(collect(a)["x"][:2], (-1, 9))
        finally:
            a.close()
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
