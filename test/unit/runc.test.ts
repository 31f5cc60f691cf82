import { describe, it, expect } from 'vitest';
import {
  checkpointArgs, deleteArgs, globalArgs, killArgs, lazyCriuOptions, lazyPagesArgs, listArgs, restoreArgs, runArgs, stateArgs, subcommandOf, type RuncGlobal,
} from '../../runtime/oci/runc.js';
import { chooseOciRuntime } from '../../runtime/oci/runtime-choice.js';

const G: RuncGlobal = { runc: '/usr/bin/runc', root: '/var/lib/runbox/runc' };
const GC: RuncGlobal = { ...G, criu: '/opt/runbox/criu/bin/criu' };
const R = ['/usr/bin/runc', '--root', '/var/lib/runbox/runc'];
const RC = [...R, '--criu', '/opt/runbox/criu/bin/criu'];
const CP = { imagePath: '/s/vps/a/checkpoints/1', workPath: '/s/vps/a/checkpoints/1.work' };

describe('runc argument builders', () => {
  it.each<[string, string[], string[]]>([
    ['global, no criu', globalArgs(G), R],
    ['global, criu', globalArgs(GC), RC],
    ['global, empty criu', globalArgs({ ...G, criu: '' }), R],
    ['run', runArgs(G, 'vps1', '/b/vps1', '/b/vps1.pid'), [...R, 'run', '--detach', '--bundle', '/b/vps1', '--pid-file', '/b/vps1.pid', 'vps1']],
    ['run with criu', runArgs(GC, 'vps1', '/b', '/p'), [...RC, 'run', '--detach', '--bundle', '/b', '--pid-file', '/p', 'vps1']],
    ['kill --all', killArgs(G, 'vps1', 'KILL', true), [...R, 'kill', '--all', 'vps1', 'KILL']],
    ['kill one', killArgs(G, 'vps1', 'TERM', false), [...R, 'kill', 'vps1', 'TERM']],
    ['delete', deleteArgs(G, 'vps1', false), [...R, 'delete', 'vps1']],
    ['delete --force', deleteArgs(G, 'vps1', true), [...R, 'delete', '--force', 'vps1']],
    ['state', stateArgs(G, 'vps1'), [...R, 'state', 'vps1']],
    ['list', listArgs(G), [...R, 'list', '--format', 'json']],
    [
      'checkpoint (stop)',
      checkpointArgs(GC, 'vps1', { ...CP, leaveRunning: false }),
      [...RC, 'checkpoint', '--image-path', CP.imagePath, '--work-path', CP.workPath, '--tcp-established', '--file-locks', 'vps1'],
    ],
    [
      'checkpoint --leave-running',
      checkpointArgs(GC, 'vps1', { ...CP, leaveRunning: true }),
      [...RC, 'checkpoint', '--image-path', CP.imagePath, '--work-path', CP.workPath, '--tcp-established', '--file-locks', '--leave-running', 'vps1'],
    ],
    [
      'checkpoint with parent',
      checkpointArgs(GC, 'vps1', { ...CP, leaveRunning: false, parentPath: '../0' }),
      [...RC, 'checkpoint', '--image-path', CP.imagePath, '--work-path', CP.workPath, '--tcp-established', '--file-locks', '--parent-path', '../0', 'vps1'],
    ],
    [
      'checkpoint --leave-running with parent',
      checkpointArgs(GC, 'vps1', { ...CP, leaveRunning: true, parentPath: '../0' }),
      [
        ...RC, 'checkpoint', '--image-path', CP.imagePath, '--work-path', CP.workPath, '--tcp-established', '--file-locks',
        '--leave-running', '--parent-path', '../0', 'vps1',
      ],
    ],
    [
      'checkpoint with empty parent',
      checkpointArgs(G, 'vps1', { ...CP, leaveRunning: false, parentPath: '' }),
      [...R, 'checkpoint', '--image-path', CP.imagePath, '--work-path', CP.workPath, '--tcp-established', '--file-locks', 'vps1'],
    ],
    [
      'restore',
      restoreArgs(GC, 'vps2', { bundle: '/b/vps2', pidFile: '/b/vps2.pid', ...CP }),
      [
        ...RC, 'restore', '--detach', '--bundle', '/b/vps2', '--pid-file', '/b/vps2.pid', '--image-path', CP.imagePath,
        '--work-path', CP.workPath, '--tcp-established', '--file-locks', 'vps2',
      ],
    ],
    [
      'checkpoint --lazy-pages (post-copy source)',
      checkpointArgs(GC, 'vps1', { ...CP, leaveRunning: false, lazy: { pageServer: '10.0.0.2:4000', statusFd: 3 } }),
      [
        ...RC, 'checkpoint', '--image-path', CP.imagePath, '--work-path', CP.workPath, '--tcp-established', '--file-locks',
        '--lazy-pages', '--page-server', '10.0.0.2:4000', '--status-fd', '3', 'vps1',
      ],
    ],
    [
      'restore --lazy-pages (post-copy target)',
      restoreArgs(GC, 'vps2', { bundle: '/b/vps2', pidFile: '/b/vps2.pid', ...CP, lazyPages: true }),
      [
        ...RC, 'restore', '--detach', '--bundle', '/b/vps2', '--pid-file', '/b/vps2.pid', '--image-path', CP.imagePath,
        '--work-path', CP.workPath, '--tcp-established', '--file-locks', '--lazy-pages', 'vps2',
      ],
    ],
    [
      'criu lazy-pages (post-copy target daemon)',
      lazyPagesArgs('/c/criu', { imagesDir: '/i', workDir: '/w', address: '10.0.0.2', port: 4000 }),
      ['/c/criu', 'lazy-pages', '--page-server', '--address', '10.0.0.2', '--port', '4000', '--images-dir', '/i', '--work-dir', '/w'],
    ],
  ])('%s', (_name, actual, expected) => {
    expect(actual).toEqual(expected);
  });

  it('puts the container id last (kill: before the signal)', () => {
    expect(killArgs(G, 'x1', 'KILL', true).slice(-2)).toEqual(['x1', 'KILL']);
    const all = [
      runArgs(G, 'x1', '/b', '/p'),
      deleteArgs(G, 'x1', true),
      stateArgs(G, 'x1'),
      checkpointArgs(G, 'x1', { ...CP, leaveRunning: true, parentPath: '/p' }),
      restoreArgs(G, 'x1', { bundle: '/b', pidFile: '/p', ...CP }),
    ];
    for (const a of all) expect(a.indexOf('x1')).toBe(a.length - 1);
  });

  it('does not share the global args array between calls', () => {
    const a = globalArgs(G);
    a.push('--debug');
    expect(globalArgs(G)).toEqual(R);
  });
});

describe('crun: the same commands, CRIU options where crun has no flags', () => {
  const C: RuncGlobal = { kind: 'crun', runc: '/opt/runbox/criu/bin/crun', root: '/var/lib/runbox/crun', criu: '/opt/runbox/criu/bin/criu' };
  const CR = ['/opt/runbox/criu/bin/crun', '--root', '/var/lib/runbox/crun'];
  const lazy = { pageServer: '10.0.0.1:4000', statusFd: 3 };

  it('names no --criu (libcriu runs the criu on PATH) and no lazy-pages flags', () => {
    expect(globalArgs(C)).toEqual(CR);
    expect(runArgs(C, 'v', '/b', '/p')).toEqual([...CR, 'run', '--detach', '--bundle', '/b', '--pid-file', '/p', 'v']);
    expect(checkpointArgs(C, 'v', { ...CP, leaveRunning: false, lazy })).toEqual([...CR, 'checkpoint', '--image-path', CP.imagePath, '--work-path', CP.workPath, '--tcp-established', '--file-locks', 'v']);
    expect(restoreArgs(C, 'v', { bundle: '/b', pidFile: '/p', ...CP, lazyPages: true })).not.toContain('--lazy-pages');
  });

  it('gives the lazy-pages settings as CRIU configuration lines instead', () => {
    expect(lazyCriuOptions({ lazy })).toEqual(['lazy-pages', 'address 10.0.0.1', 'port 4000', 'status-fd 3']);
    expect(lazyCriuOptions({ lazy: { pageServer: '[fd00::1]:4000', statusFd: 3 } })).toEqual(['lazy-pages', 'address fd00::1', 'port 4000', 'status-fd 3']);
    expect(lazyCriuOptions({ lazyPages: true })).toEqual(['lazy-pages']);
    expect(lazyCriuOptions({})).toEqual([]);
  });

  it('names the subcommand of an argv for messages', () => {
    expect(subcommandOf(runArgs(GC, 'v', '/b', '/p'))).toBe('run');
    expect(subcommandOf(restoreArgs(C, 'v', { bundle: '/b', pidFile: '/p', ...CP }))).toBe('restore');
  });
});

describe('which OCI runtime a host uses', () => {
  const paths = { runc: 'runc', crun: '/opt/runbox/criu/bin/crun' };
  const ready = { crunExecutable: true, hybridV2Controllers: [] };

  it('auto takes crun where it works, runc otherwise, and says why', () => {
    expect(chooseOciRuntime('auto', paths, ready)).toMatchObject({ kind: 'crun', path: paths.crun });
    expect(chooseOciRuntime('auto', paths, { ...ready, crunExecutable: false })).toMatchObject({ kind: 'runc', path: 'runc', reason: expect.stringMatching(/not an executable/) });
    expect(chooseOciRuntime('auto', paths, { ...ready, hybridV2Controllers: ['hugetlb'] })).toMatchObject({ kind: 'runc', reason: expect.stringMatching(/hybrid.*hugetlb/) });
  });

  it('an explicit choice is kept, and crun where it cannot work is refused with the reason', () => {
    expect(chooseOciRuntime('runc', paths, ready)).toMatchObject({ kind: 'runc' });
    expect(chooseOciRuntime('crun', paths, ready)).toMatchObject({ kind: 'crun' });
    expect(() => chooseOciRuntime('crun', paths, { ...ready, hybridV2Controllers: ['hugetlb'] })).toThrow(/RUNBOX_RUNTIME=crun, but crun refuses this hybrid cgroup layout/);
  });
});
