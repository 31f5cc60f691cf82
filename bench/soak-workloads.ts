import type { JobRequestInput } from '../core/job.js';

/**
 * The soak's job kinds. Each runs for about `ticks` tenths of a second, prints one numbered line
 * per step and, at its end, a verdict line that checks its own state: so its log alone shows
 * whether anything was lost, repeated or corrupted across moves, drains and host crashes.
 */
export type Kind = 'counter' | 'db' | 'memory' | 'files';
export const KINDS: readonly Kind[] = ['counter', 'db', 'memory', 'files'];

/**
 * SQLite over loopback TCP: a server thread owns one connection and runs a write transaction per
 * request; the client sends numbered requests and prints each answer (the counter after the
 * commit). A second database holds one transaction open from start to end, committed last.
 * Invariants at the end: every request committed exactly once, the open transaction has every row.
 */
const DB_PY = `
import socket, sqlite3, sys, threading, time
N = int(sys.argv[1])
db = '/var/tmp/soak.sqlite'
c = sqlite3.connect(db)
c.execute('create table if not exists t (k integer primary key, v integer)')
c.execute('insert or ignore into t values (0, 0)')
c.commit(); c.close()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', 5000)); srv.listen(1)
def serve():
    conn, _ = srv.accept()
    d = sqlite3.connect(db, timeout=60, isolation_level=None)
    f = conn.makefile('rw')
    for line in f:
        n = int(line)
        d.execute('begin immediate')
        d.execute('update t set v = v + 1 where k = 0')
        d.execute('insert into t values (?, ?)', (n + 1, n))
        d.execute('commit')
        f.write('%d %d\\n' % (n, d.execute('select v from t where k = 0').fetchone()[0])); f.flush()
threading.Thread(target=serve, daemon=True).start()
longdb = sqlite3.connect('/var/tmp/long.sqlite', isolation_level=None)
longdb.execute('create table if not exists l (i integer primary key)')
longdb.execute('begin immediate')
cl = socket.create_connection(('127.0.0.1', 5000)); f = cl.makefile('rw')
for i in range(N):
    f.write('%d\\n' % i); f.flush()
    print('t ' + f.readline().strip(), flush=True)
    longdb.execute('insert into l values (?)', (i,))
    time.sleep(0.1)
longdb.execute('commit')
d = sqlite3.connect(db)
rows = d.execute('select count(*) from t').fetchone()[0]
v = d.execute('select v from t where k = 0').fetchone()[0]
distinct = d.execute('select count(distinct v) from t where k > 0').fetchone()[0]
held = sqlite3.connect('/var/tmp/long.sqlite').execute('select count(*) from l').fetchone()[0]
ok = rows == N + 1 and v == N and distinct == N and held == N
print('db-ok' if ok else 'db-BAD rows=%d v=%d distinct=%d held=%d' % (rows, v, distinct, held), flush=True)
`;

/** 48 MiB of seeded pseudo-random bytes, read back now and then; a checksum at the start and the end. */
const MEMORY_PY = `
import hashlib, random, sys, time
N = int(sys.argv[1])
buf = bytearray(random.Random(7).randbytes(48 << 20))
before = hashlib.sha256(buf).hexdigest()
for i in range(N):
    print('m %d %d' % (i, buf[(i * 1048573) % len(buf)]), flush=True)
    time.sleep(0.1)
print('memory-intact' if hashlib.sha256(buf).hexdigest() == before else 'memory-CORRUPT', flush=True)
`;

export function jobFor(kind: Kind, ticks: number): JobRequestInput {
  // Its work takes ticks/10 s; moves, checkpoints and a restore after a host crash add pauses.
  const timeoutSec = Math.ceil(ticks / 10) * 2 + 300;
  const base = { checkpoint: { everySec: 5 }, labels: { soak: kind }, limits: { timeoutSec } };
  switch (kind) {
    case 'counter':
      return { ...base, script: `i=0; while [ $i -lt ${ticks} ]; do echo "c $i"; i=$((i+1)); sleep 0.1; done; echo done` };
    case 'files':
      // Every file is written once with its checksum in a manifest; the end checks them all.
      return {
        ...base,
        script: [
          'mkdir -p /data && : > /data/manifest',
          `i=0; while [ $i -lt ${ticks} ]; do seq $i $((i+200)) > /data/f$i; md5sum /data/f$i >> /data/manifest; echo "f $i"; i=$((i+1)); sleep 0.1; done`,
          'md5sum -c /data/manifest >/dev/null && [ $(wc -l < /data/manifest) -eq ' + ticks + ' ] && echo files-intact || echo files-CORRUPT',
        ].join('\n'),
      };
    case 'db':
      return { ...base, template: 'python', user: 'root', command: ['python3', '/opt/soak/db.py', String(ticks)], files: { '/opt/soak/db.py': { content: DB_PY } } };
    case 'memory':
      return {
        ...base,
        template: 'python',
        user: 'root',
        limits: { memoryMb: 256, timeoutSec },
        command: ['python3', '/opt/soak/memory.py', String(ticks)],
        files: { '/opt/soak/memory.py': { content: MEMORY_PY } },
      };
  }
}

/** The log a job of `kind` must have produced: every line once, in order, then its verdict. */
export function expectedLog(kind: Kind, ticks: number): (lines: string[]) => string | undefined {
  const steps = (prefix: string) => Array.from({ length: ticks }, (_, i) => `${prefix} ${i}`);
  const exact = (want: string[]) => (lines: string[]) => firstDifference(lines, want);
  switch (kind) {
    case 'counter':
      return exact([...steps('c'), 'done']);
    case 'files':
      return exact([...steps('f'), 'files-intact']);
    case 'db':
      return exact([...Array.from({ length: ticks }, (_, i) => `t ${i} ${i + 1}`), 'db-ok']);
    case 'memory':
      // The byte read at each step is the job's own business; the step numbers and the verdict are not.
      return (lines) => firstDifference(lines.map((l) => l.replace(/^(m \d+) \d+$/, '$1')), [...steps('m'), 'memory-intact']);
  }
}

function firstDifference(got: string[], want: string[]): string | undefined {
  for (let i = 0; i < Math.max(got.length, want.length); i++) {
    if (got[i] !== want[i]) return `line ${i + 1}: expected ${JSON.stringify(want[i] ?? '<end>')}, got ${JSON.stringify(got[i] ?? '<end>')} (${got.length} lines)`;
  }
  return undefined;
}
