import { describe, it, expect } from 'vitest';
import {
  checkpointArgs, deleteArgs, globalArgs, killArgs, lazyPagesArgs, listArgs, restoreArgs, runArgs, stateArgs, type RuncGlobal,
} from '../../runtime/oci/runc.js';

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
