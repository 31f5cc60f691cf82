import { describe, it, expect } from 'vitest';
import {
  AGENT_VERSION, encodeCollect, encodeFileWrite, encodeJob, encodeSignal, encodeStdin, encodeStdinClose, FRAME_HEADER,
  FrameDecoder, MAX_FRAME, MAX_PAYLOAD, type AgentFrame,
} from '../../runtime/agent/protocol.js';

/** Deterministic pseudo-random bytes. */
function bytes(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

function mk(type: string, payload: Buffer | string): Buffer {
  const p = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  const h = Buffer.alloc(FRAME_HEADER);
  h.write(type, 0, 'latin1');
  h.writeUInt32LE(p.length, 1);
  return Buffer.concat([h, p]);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function exitedPayload(code: number, signal: number, cpuUs: bigint, rss: bigint): Buffer {
  const p = Buffer.alloc(24);
  p.writeInt32LE(code, 0);
  p.writeInt32LE(signal, 4);
  p.writeBigUInt64LE(cpuUs, 8);
  p.writeBigUInt64LE(rss, 16);
  return p;
}

function writtenPayload(errno: number, msg: string): Buffer {
  const p = Buffer.alloc(4);
  p.writeInt32LE(errno);
  return Buffer.concat([p, Buffer.from(msg, 'utf8')]);
}

/** Splits one frame into header fields and payload, checking the length field. */
function unframe(f: Buffer): { type: string; payload: Buffer } {
  expect(f.length).toBeGreaterThanOrEqual(FRAME_HEADER);
  expect(f.readUInt32LE(1)).toBe(f.length - FRAME_HEADER);
  return { type: String.fromCharCode(f[0]!), payload: f.subarray(FRAME_HEADER) };
}

/** Parses a W payload into its records and the data after the 'd' byte. */
function parseW(payload: Buffer): { records: Array<[string, string]>; data: Buffer } {
  const records: Array<[string, string]> = [];
  let i = 0;
  while (i < payload.length) {
    const key = String.fromCharCode(payload[i]!);
    if (key === 'd') return { records, data: payload.subarray(i + 1) };
    const end = payload.indexOf(0, i + 1);
    expect(end).toBeGreaterThan(i);
    records.push([key, payload.subarray(i + 1, end).toString('utf8')]);
    i = end + 1;
  }
  throw new Error('no data marker');
}

describe('constants', () => {
  it('match the protocol document', () => {
    expect(FRAME_HEADER).toBe(5);
    expect(MAX_FRAME).toBe(4096);
    expect(MAX_PAYLOAD).toBe(4091);
    expect(AGENT_VERSION).toBe('runbox-agent/1');
  });
});

describe('encodeJob', () => {
  it('lays out records byte-exactly', () => {
    const f = encodeJob({ argv: ['echo', 'hi'], env: { A: '1', B: 'x y' }, workdir: '/w', user: 'bob' });
    const payload = 'aecho\0ahi\0eA=1\0eB=x y\0w/w\0ubob\0';
    expect(f).toEqual(Buffer.concat([Buffer.from([0x4a, payload.length, 0, 0, 0]), Buffer.from(payload, 'latin1')]));
    expect([...f.subarray(0, 15)]).toEqual([0x4a, 31, 0, 0, 0, 0x61, 0x65, 0x63, 0x68, 0x6f, 0x00, 0x61, 0x68, 0x69, 0x00]);
    expect(f.length).toBe(5 + 31);
  });

  it('omits absent workdir and user and encodes values as UTF-8', () => {
    const f = encodeJob({ argv: ['é'], env: {} });
    expect([...f]).toEqual([0x4a, 4, 0, 0, 0, 0x61, 0xc3, 0xa9, 0x00]);
  });

  it('keeps argv order and empty arguments', () => {
    const { payload } = unframe(encodeJob({ argv: ['sh', '-c', '', 'x'], env: { EMPTY: '' } }));
    expect(payload.toString('latin1')).toBe('ash\0a-c\0a\0ax\0eEMPTY=\0');
  });

  it.each([
    ['argv', { argv: ['a\0b'], env: {} }, /command arguments must not contain NUL/],
    ['env name', { argv: ['x'], env: { 'A\0': '1' } }, /environment must not contain NUL/],
    ['env value', { argv: ['x'], env: { A: '1\0' } }, /environment must not contain NUL/],
    ['workdir', { argv: ['x'], env: {}, workdir: '/a\0' }, /workdir must not contain NUL/],
    ['user', { argv: ['x'], env: {}, user: 'root\0' }, /user must not contain NUL/],
  ])('rejects NUL in %s', (_what, spec, msg) => {
    expect(() => encodeJob(spec)).toThrow(msg);
  });

  it('accepts a spec that exactly fills one frame', () => {
    const f = encodeJob({ argv: ['x'.repeat(MAX_PAYLOAD - 2)], env: {} });
    expect(f.length).toBe(MAX_FRAME);
    expect(f.readUInt32LE(1)).toBe(MAX_PAYLOAD);
  });

  it.each([
    ['one long argument', { argv: ['x'.repeat(MAX_PAYLOAD - 1)], env: {} }, 4092],
    ['multi-byte characters', { argv: ['é'.repeat(2046)], env: {} }, 4094],
    ['a big environment', { argv: ['true'], env: Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`V${i}`, 'value'])) }, 6 + 5890],
  ])('rejects an oversized spec: %s', (_what, spec, size) => {
    expect(() => encodeJob(spec)).toThrow(`command, environment and workdir together must fit in 4091 bytes (got ${size})`);
  });
});

describe('small host frames', () => {
  it('encodes stdin close and signals', () => {
    expect([...encodeStdinClose()]).toEqual([0x43, 0, 0, 0, 0]);
    expect([...encodeSignal(15)]).toEqual([0x4b, 4, 0, 0, 0, 15, 0, 0, 0]);
    expect([...encodeSignal(9)]).toEqual([0x4b, 4, 0, 0, 0, 9, 0, 0, 0]);
  });
});

describe('encodeStdin', () => {
  it('produces no frames for empty input', () => {
    expect(encodeStdin(Buffer.alloc(0))).toEqual([]);
  });

  it('encodes a small chunk byte-exactly', () => {
    expect(encodeStdin(Buffer.from('hi\n'))).toEqual([Buffer.from([0x49, 3, 0, 0, 0, 0x68, 0x69, 0x0a])]);
  });

  it.each([1, 100, MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 2 * MAX_PAYLOAD, 2 * MAX_PAYLOAD + 1, 10_000, 3 * MAX_PAYLOAD + 17, 100_000])(
    'splits %d bytes into full frames of at most 4096 bytes',
    (n) => {
      const input = bytes(n, n);
      const frames = encodeStdin(input);
      expect(frames).toHaveLength(Math.ceil(n / MAX_PAYLOAD));
      const parts = frames.map((f) => {
        expect(f.length).toBeLessThanOrEqual(MAX_FRAME);
        const { type, payload } = unframe(f);
        expect(type).toBe('I');
        expect(payload.length).toBeGreaterThan(0);
        return payload;
      });
      // every frame but the last is full
      for (const p of parts.slice(0, -1)) expect(p.length).toBe(MAX_PAYLOAD);
      expect(Buffer.concat(parts).equals(input)).toBe(true);
    },
  );
});

describe('encodeFileWrite', () => {
  it('encodes a small file byte-exactly with the default mode', () => {
    const frames = encodeFileWrite({ path: '/etc/x', content: Buffer.from('hello') });
    const payload = 'p/etc/x\0m644\0dhello';
    expect(frames).toEqual([Buffer.concat([Buffer.from([0x57, payload.length, 0, 0, 0]), Buffer.from(payload, 'latin1')])]);
  });

  it('writes mode in octal and the owner record', () => {
    const [f, ...rest] = encodeFileWrite({ path: '/srv/run.sh', content: Buffer.from('#!/bin/sh\n'), mode: 0o755, owner: 'app:staff' });
    expect(rest).toEqual([]);
    const { type, payload } = unframe(f!);
    expect(type).toBe('W');
    expect(parseW(payload)).toEqual({
      records: [['p', '/srv/run.sh'], ['m', '755'], ['o', 'app:staff']],
      data: Buffer.from('#!/bin/sh\n'),
    });
  });

  it('sends one frame for an empty file', () => {
    const frames = encodeFileWrite({ path: '/empty', content: Buffer.alloc(0), mode: 0o600 });
    expect(frames).toHaveLength(1);
    expect(parseW(unframe(frames[0]!).payload)).toEqual({ records: [['p', '/empty'], ['m', '600']], data: Buffer.alloc(0) });
  });

  // first frame header "p/data/f.bin\0m644\0d" = 19 bytes, so 4072 content bytes fit in the first frame
  const FIRST_ROOM = MAX_PAYLOAD - 19;
  it.each([1, FIRST_ROOM - 1, FIRST_ROOM, FIRST_ROOM + 1, 10_000, 65_536, 200_001])('splits a %d-byte file into append frames', (n) => {
    const content = bytes(n, 7);
    const frames = encodeFileWrite({ path: '/data/f.bin', content });
    const parsed = frames.map((f, i) => {
      expect(f.length).toBeLessThanOrEqual(MAX_FRAME);
      if (i < frames.length - 1) expect(f.length).toBe(MAX_FRAME);
      const { type, payload } = unframe(f);
      expect(type).toBe('W');
      return parseW(payload);
    });
    expect(parsed[0]!.records).toEqual([['p', '/data/f.bin'], ['m', '644']]);
    expect(parsed[0]!.data.length).toBe(Math.min(n, FIRST_ROOM));
    for (const p of parsed.slice(1)) expect(p.records).toEqual([['p', '/data/f.bin'], ['m', '644'], ['A', '']]);
    expect(frames).toHaveLength(n <= FIRST_ROOM ? 1 : 1 + Math.ceil((n - FIRST_ROOM) / (FIRST_ROOM - 2)));
    expect(Buffer.concat(parsed.map((p) => p.data)).equals(content)).toBe(true);
  });

  it('keeps the owner on every frame', () => {
    const frames = encodeFileWrite({ path: '/f', content: bytes(9000), owner: '1000:1000' });
    expect(frames.length).toBe(3);
    for (const [i, f] of frames.entries()) {
      const { records } = parseW(unframe(f).payload);
      expect(records).toEqual([['p', '/f'], ['m', '644'], ['o', '1000:1000'], ...(i > 0 ? [['A', '']] : [])]);
    }
  });

  it('rejects NUL in the path', () => {
    expect(() => encodeFileWrite({ path: '/a\0/b', content: Buffer.alloc(1) })).toThrow('file path must not contain NUL bytes');
  });

  it('rejects NUL in the owner', () => {
    expect(() => encodeFileWrite({ path: '/a', content: Buffer.alloc(1), owner: 'bob\0pevil' })).toThrow(/NUL/);
  });

  it('rejects a path too long for any content', () => {
    expect(() => encodeFileWrite({ path: '/' + 'x'.repeat(MAX_PAYLOAD), content: Buffer.from('x') })).toThrow('file path too long');
  });
});

describe('FrameDecoder', () => {
  const STREAM: Array<[Buffer, AgentFrame | null]> = [
    [mk('R', AGENT_VERSION), { type: 'ready', version: 'runbox-agent/1' }],
    [mk('S', u32(42)), { type: 'started', pid: 42 }],
    [mk('O', 'out\n'), { type: 'stdout', data: Buffer.from('out\n') }],
    [mk('O', ''), { type: 'stdout', data: Buffer.alloc(0) }],
    [mk('E', Buffer.from([0, 255, 10])), { type: 'stderr', data: Buffer.from([0, 255, 10]) }],
    [mk('Q', 'unknown'), null],
    [mk('D', 'exec: /bin/nope: No such file or directory ü'), { type: 'diagnostic', message: 'exec: /bin/nope: No such file or directory ü' }],
    [mk('w', writtenPayload(0, '')), { type: 'fileWritten', errno: 0, message: '' }],
    [mk('w', writtenPayload(13, 'Permission denied')), { type: 'fileWritten', errno: 13, message: 'Permission denied' }],
    [mk('S', Buffer.from([1, 2])), null],
    [mk('X', exitedPayload(0, 0, 1234n, 2048n)), { type: 'exited', code: 0, signal: 0, cpuUs: 1234, maxRssKiB: 2048 }],
    [mk('X', Buffer.alloc(23)), null],
    [mk('w', Buffer.from([1, 2, 3])), null],
    [mk('X', exitedPayload(-1, 9, 2n ** 40n + 5n, 123_456n)), { type: 'exited', code: -1, signal: 9, cpuUs: 2 ** 40 + 5, maxRssKiB: 123_456 }],
    [mk('\x00', 'x'), null],
  ];
  const INPUT = Buffer.concat(STREAM.map(([b]) => b));
  const EXPECTED = STREAM.flatMap(([, f]) => (f ? [f] : []));

  it('decodes every frame type from one chunk, skipping unknown and short frames', () => {
    expect(new FrameDecoder().push(INPUT)).toEqual(EXPECTED);
    expect(EXPECTED).toHaveLength(10);
  });

  it('decodes identically when split at every byte boundary', () => {
    for (let i = 0; i <= INPUT.length; i++) {
      const d = new FrameDecoder();
      const got = [...d.push(INPUT.subarray(0, i)), ...d.push(INPUT.subarray(i))];
      expect(got, `split at ${i}`).toEqual(EXPECTED);
    }
  });

  it('decodes identically when split at every pair of boundaries', () => {
    const part = Buffer.concat(STREAM.slice(0, 6).map(([b]) => b));
    const expected = STREAM.slice(0, 6).flatMap(([, f]) => (f ? [f] : []));
    for (let i = 0; i <= part.length; i++) {
      for (let j = i; j <= part.length; j++) {
        const d = new FrameDecoder();
        const got = [...d.push(part.subarray(0, i)), ...d.push(part.subarray(i, j)), ...d.push(part.subarray(j))];
        expect(got).toEqual(expected);
      }
    }
  });

  it('decodes one byte at a time', () => {
    const d = new FrameDecoder();
    const got: AgentFrame[] = [];
    for (let i = 0; i < INPUT.length; i++) got.push(...d.push(INPUT.subarray(i, i + 1)));
    expect(got).toEqual(EXPECTED);
  });

  it('returns nothing for a partial header or payload', () => {
    const d = new FrameDecoder();
    const f = mk('O', 'abcdef');
    expect(d.push(f.subarray(0, 4))).toEqual([]);
    expect(d.push(f.subarray(4, 8))).toEqual([]);
    expect(d.push(f.subarray(8))).toEqual([{ type: 'stdout', data: Buffer.from('abcdef') }]);
  });

  it('returns data that does not alias the input chunk', () => {
    const chunk = mk('O', 'abc');
    const [f] = new FrameDecoder().push(chunk);
    chunk.fill(0);
    expect(f).toEqual({ type: 'stdout', data: Buffer.from('abc') });
  });

  it('accepts a maximal frame', () => {
    const data = bytes(MAX_PAYLOAD, 3);
    expect(new FrameDecoder().push(mk('O', data))).toEqual([{ type: 'stdout', data }]);
  });

  it('throws on an oversized length as soon as the header arrives', () => {
    const header = Buffer.from([0x4f, 0, 0, 0, 0]);
    header.writeUInt32LE(MAX_PAYLOAD + 1, 1);
    expect(() => new FrameDecoder().push(header)).toThrow('agent sent an oversized frame (4092 bytes): protocol violation');
    const huge = Buffer.from([0x4f, 0xff, 0xff, 0xff, 0xff]);
    expect(() => new FrameDecoder().push(huge)).toThrow(/oversized frame \(4294967295 bytes\)/);
  });

  it('throws on an oversized frame after valid ones in the same chunk', () => {
    const bad = Buffer.from([0x4f, 0, 0x10, 0, 0]); // 4096
    expect(() => new FrameDecoder().push(Buffer.concat([mk('O', 'ok'), bad]))).toThrow(/oversized frame \(4096 bytes\)/);
  });

  it('round-trips what the host encoders produce (framing only)', () => {
    const frames = [...encodeStdin(bytes(9000)), encodeStdinClose(), encodeSignal(2)];
    // these are host->agent types, unknown to the host decoder: all skipped, nothing thrown
    expect(new FrameDecoder().push(Buffer.concat(frames))).toEqual([]);
  });
});

function collectedPayload(files: number, bytes: bigint, truncated: number, text: string): Buffer {
  const p = Buffer.alloc(13);
  p.writeUInt32LE(files, 0);
  p.writeBigUInt64LE(bytes, 4);
  p[12] = truncated;
  return Buffer.concat([p, Buffer.from(text, 'utf8')]);
}

describe('encodeCollect', () => {
  it('lays out records byte-exactly', () => {
    const f = encodeCollect({ patterns: ['/out', 'result.json'], maxBytes: 1048576, maxFiles: 100 });
    const payload = 'g/out\0gresult.json\0n1048576\0f100\0';
    expect(payload.length).toBe(33);
    expect(f).toEqual(Buffer.concat([Buffer.from([0x47, 33, 0, 0, 0]), Buffer.from(payload, 'latin1')]));
    expect([...f.subarray(0, 11)]).toEqual([0x47, 33, 0, 0, 0, 0x67, 0x2f, 0x6f, 0x75, 0x74, 0x00]);
  });

  it('keeps pattern order, duplicates and UTF-8, and encodes zero caps', () => {
    const { type, payload } = unframe(encodeCollect({ patterns: ['b/*', 'é', 'b/*'], maxBytes: 0, maxFiles: 0 }));
    expect(type).toBe('G');
    expect(payload).toEqual(Buffer.from('gb/*\0g\xc3\xa9\0gb/*\0n0\0f0\0', 'latin1'));
  });

  it('writes big caps in plain decimal', () => {
    const { payload } = unframe(encodeCollect({ patterns: ['/'], maxBytes: Number.MAX_SAFE_INTEGER, maxFiles: 2 ** 32 }));
    expect(payload.toString('latin1')).toBe('g/\0n9007199254740991\0f4294967296\0');
  });

  it.each([
    ['no pattern', { patterns: [], maxBytes: 1, maxFiles: 1 }, 'at least one pattern is needed'],
    ['an empty pattern', { patterns: ['/a', ''], maxBytes: 1, maxFiles: 1 }, 'patterns must not be empty'],
    ['NUL in a pattern', { patterns: ['/a\0b'], maxBytes: 1, maxFiles: 1 }, 'pattern must not contain NUL bytes'],
    ['negative maxBytes', { patterns: ['/a'], maxBytes: -1, maxFiles: 1 }, 'maxBytes must be a non-negative integer (got -1)'],
    ['fractional maxBytes', { patterns: ['/a'], maxBytes: 1.5, maxFiles: 1 }, 'maxBytes must be a non-negative integer (got 1.5)'],
    ['NaN maxFiles', { patterns: ['/a'], maxBytes: 1, maxFiles: NaN }, 'maxFiles must be a non-negative integer (got NaN)'],
    ['unsafe maxFiles', { patterns: ['/a'], maxBytes: 1, maxFiles: 2 ** 53 }, 'maxFiles must be a non-negative integer'],
  ])('rejects %s', (_what, req, msg) => {
    expect(() => encodeCollect(req)).toThrow(msg);
  });

  it('accepts patterns that exactly fill one frame and rejects one byte more', () => {
    // "g" + pattern + NUL, "n1\0", "f1\0": 2 + len + 6
    const fits = encodeCollect({ patterns: ['/' + 'x'.repeat(MAX_PAYLOAD - 9)], maxBytes: 1, maxFiles: 1 });
    expect(fits.length).toBe(MAX_FRAME);
    expect(() => encodeCollect({ patterns: ['/' + 'x'.repeat(MAX_PAYLOAD - 8)], maxBytes: 1, maxFiles: 1 })).toThrow(
      'patterns together must fit in 4091 bytes (got 4092)',
    );
  });
});

describe('FrameDecoder: collection frames', () => {
  const data = bytes(300, 11);
  const STREAM: Array<[Buffer, AgentFrame | null]> = [
    [mk('F', 'p/out/a.txt\0s6\0m640\0'), { type: 'fileHeader', path: '/out/a.txt', size: 6, mode: 0o640 }],
    [mk('B', 'hello\n'), { type: 'fileData', data: Buffer.from('hello\n') }],
    [mk('F', 'p/out/empty\0s0\0m644\0'), { type: 'fileHeader', path: '/out/empty', size: 0, mode: 0o644 }],
    [mk('F', 'p/out/é b\n\0m4755\0s300\0'), { type: 'fileHeader', path: '/out/é b\n', size: 300, mode: 0o4755 }],
    [mk('B', data), { type: 'fileData', data }],
    [mk('B', ''), { type: 'fileData', data: Buffer.alloc(0) }],
    [mk('F', 'p/big\0s9007199254740991\0m600\0'), { type: 'fileHeader', path: '/big', size: 2 ** 53 - 1, mode: 0o600 }],
    [mk('F', 's1\0m644\0'), null], // no path
    [mk('F', 'p\0s1\0m644\0'), null], // empty path
    [mk('F', 'p/x\0s-1\0m644\0'), null],
    [mk('F', 'p/x\0s\0m644\0'), null],
    [mk('F', 'p/x\0s1\0m9\0'), null],
    [mk('F', 'p/x\0s1\0'), null], // no mode
    [mk('F', 'p/x\0s1\0m644'), null], // unterminated
    [mk('F', 'p/x\0s9007199254740993\0m644\0'), null], // beyond 2^53
    [mk('Z', collectedPayload(3, 4097n, 0, '')), { type: 'collected', files: 3, bytes: 4097, truncated: false, notes: [] }],
    [
      mk('Z', collectedPayload(0, 0n, 1, 'skipped /x: symlink\nskipped /big: over the size cap (5 bytes, 1 left)\n')),
      { type: 'collected', files: 0, bytes: 0, truncated: true, notes: ['skipped /x: symlink', 'skipped /big: over the size cap (5 bytes, 1 left)'] },
    ],
    [mk('Z', Buffer.alloc(12)), null],
    [
      mk('Z', collectedPayload(2 ** 32 - 1, 2n ** 40n + 7n, 2, 'no match: *.ü')),
      { type: 'collected', files: 2 ** 32 - 1, bytes: 2 ** 40 + 7, truncated: true, notes: ['no match: *.ü'] },
    ],
    [mk('Z', 'unknown'), null],
  ];
  const INPUT = Buffer.concat(STREAM.map(([b]) => b));
  const EXPECTED = STREAM.flatMap(([, f]) => (f ? [f] : []));

  it('decodes F, B and Z byte-exactly from one chunk, skipping malformed ones', () => {
    const raw = [0x46, 12, 0, 0, 0, 0x70, 0x2f, 0x61, 0, 0x73, 0x31, 0, 0x6d, 0x36, 0x34, 0x34, 0, 0x42, 1, 0, 0, 0, 0x7a];
    const z = [0x5a, 14, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x78];
    expect(new FrameDecoder().push(Buffer.from([...raw, ...z]))).toEqual([
      { type: 'fileHeader', path: '/a', size: 1, mode: 0o644 },
      { type: 'fileData', data: Buffer.from('z') },
      { type: 'collected', files: 1, bytes: 1, truncated: true, notes: ['x'] },
    ]);
    expect(new FrameDecoder().push(INPUT)).toEqual(EXPECTED);
    expect(EXPECTED).toHaveLength(10);
  });

  it('decodes identically when split at every byte boundary', () => {
    for (let i = 0; i <= INPUT.length; i++) {
      const d = new FrameDecoder();
      const got = [...d.push(INPUT.subarray(0, i)), ...d.push(INPUT.subarray(i))];
      expect(got, `split at ${i}`).toEqual(EXPECTED);
    }
  });

  it('decodes identically when split at every pair of boundaries', () => {
    const pick = [0, 1, 2, 7, 15, 16, 17];
    const part = Buffer.concat(pick.map((i) => STREAM[i]![0]));
    const expected = pick.flatMap((i) => (STREAM[i]![1] ? [STREAM[i]![1]!] : []));
    for (let i = 0; i <= part.length; i++) {
      for (let j = i; j <= part.length; j++) {
        const d = new FrameDecoder();
        const got = [...d.push(part.subarray(0, i)), ...d.push(part.subarray(i, j)), ...d.push(part.subarray(j))];
        expect(got).toEqual(expected);
      }
    }
  });

  it('decodes one byte at a time', () => {
    const d = new FrameDecoder();
    const got: AgentFrame[] = [];
    for (let i = 0; i < INPUT.length; i++) got.push(...d.push(INPUT.subarray(i, i + 1)));
    expect(got).toEqual(EXPECTED);
  });

  it('accepts a maximal B frame', () => {
    const big = bytes(MAX_PAYLOAD, 12);
    expect(new FrameDecoder().push(mk('B', big))).toEqual([{ type: 'fileData', data: big }]);
  });

  it('skips the host-to-agent G frame (not an agent frame)', () => {
    expect(new FrameDecoder().push(encodeCollect({ patterns: ['/a'], maxBytes: 1, maxFiles: 1 }))).toEqual([]);
  });
});
