import { loadAddon } from './load.js';

/**
 * Real anonymous pipes. Node's child_process gives children unix socketpairs, not pipes, and CRIU
 * cannot checkpoint a container whose stdio are sockets connected to a host process, while
 * `runc restore` re-maps pipes onto new ones (descriptors.json). build/pipe.node (runtime/native/
 * pipe.c, compiled by setup) is a ten-line addon around pipe2(O_CLOEXEC).
 */
interface PipeAddon {
  pipe2(): [number, number];
  pending(fd: number): number;
}

let addon: PipeAddon | undefined;

/** Unread bytes in the pipe behind `fd` (FIONREAD). */
export function pendingBytes(fd: number): number {
  return load().pending(fd);
}

export function pipe2(): { read: number; write: number } {
  const [read, write] = load().pipe2();
  return { read, write };
}

function load(): PipeAddon {
  return (addon ??= loadAddon<PipeAddon>('pipe'));
}
