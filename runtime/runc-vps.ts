import fs from 'node:fs';
import path from 'node:path';
import { RunboxError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { AgentChannel } from './agent/channel.js';
import {
  AGENT_VERSION, encodeCollect, encodeFileWrite, encodeJob, encodeOutputQuery, encodeStdin, encodeStdinClose, type AgentFrame,
} from './agent/protocol.js';
import { collectThrough, type CollectOptions, type CollectResult } from './agent/collect.js';
import { VpsCgroup } from './cgroups/cgroup.js';
import type { CgroupUsage } from './cgroups/stats.js';
import { pipe2 } from './native/pipe.js';
import { spawnProcess } from './native/sys.js';
import { runcKill, subcommandOf, type RuncGlobal } from './oci/runc.js';
import { execOk } from './exec.js';
import { next, type VpsOp, type VpsState } from './state.js';
import type { JobRun, RunResult, Vps, VpsInfo } from './vps.js';

const AGENT_READY_TIMEOUT_MS = 15_000;
/**
 * The longest `runc run --detach` or `runc restore --detach` may take. A restore that hangs inside
 * CRIU (a lazy-pages source that stalls, a kernel wait) must fail the create, so that an incoming
 * migration answers (and hands its claim back) before its source stops waiting (3 minutes).
 */
export const RUNC_START_TIMEOUT_MS = 120_000;

/**
 * Starts a runc process (run or restore) whose stdio are fresh pipes, and returns the host side of
 * those pipes as an AgentChannel. runc passes its stdio through to the container's init in detached
 * mode, so the agent's fds 0/1/2 are these pipes.
 */
export async function startWithPipes(argv: string[], log: Logger, timeoutMs = RUNC_START_TIMEOUT_MS): Promise<AgentChannel> {
  const ctl = pipe2();
  const out = pipe2();
  const err = pipe2();
  const channel = new AgentChannel(out.read, ctl.write, err.read);
  const what = `${path.basename(argv[0] ?? 'runtime')} ${subcommandOf(argv)}`;
  try {
    // Its own session and process group, so that past the deadline the CRIU runc started for a
    // restore goes too. posix_spawn (runtime/native/sys.ts): no copy of this process's page tables.
    const child = spawnProcess(argv, { fds: [ctl.read, out.write, err.write], newSession: true });
    const code = await new Promise<number | null>((resolve, reject) => {
      const deadline = setTimeout(() => {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          /* it ended just now */
        }
        reject(new RunboxError('unavailable', `${what} did not finish within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      void child.exit.then((e) => {
        clearTimeout(deadline);
        resolve(e.code);
      });
    });
    if (code !== 0) {
      await new Promise((r) => setTimeout(r, 20)); // let runc's last stderr line arrive
      throw new RunboxError('unavailable', `${what} failed (exit ${code}): ${channel.diagnostics}`);
    }
  } catch (e) {
    channel.close();
    throw e;
  } finally {
    // The container holds its own copies now; ours would keep the pipes open after it exits.
    for (const fd of [ctl.read, out.write, err.write]) fs.closeSync(fd);
  }
  log.trace({ argv: argv.slice(3) }, 'runc started');
  return channel;
}

export async function waitReady(channel: AgentChannel): Promise<void> {
  const r = await channel.waitFor((f): f is Extract<AgentFrame, { type: 'ready' }> => f.type === 'ready', 'ready message', AGENT_READY_TIMEOUT_MS);
  if (r.version !== AGENT_VERSION) {
    throw new RunboxError('internal', `agent speaks ${r.version}, host expects ${AGENT_VERSION}: rebuild with "npm run setup"`);
  }
}

/** A VPS run by runc, talking to its agent over pipes. */
export class RuncVps implements Vps {
  private stateValue: VpsState = 'creating';
  private jobStarted = false;
  /** Set while a checkpoint/restore swaps the channel: the old channel's EOF is not the job's end. */
  private swapping = false;
  private onChannelSwap?: () => void;
  /**
   * Settles when the last collection's frames have all arrived (its Z, or the channel's end),
   * even if its caller gave up: the next collection must not see the previous one's frames.
   */
  private collectTail: Promise<void> = Promise.resolve();

  constructor(
    private vpsInfo: Omit<VpsInfo, 'state'>,
    private channelValue: AgentChannel,
    readonly cgroup: VpsCgroup,
    private readonly runc: RuncGlobal,
    private readonly log: Logger,
  ) {}

  get id(): string {
    return this.vpsInfo.id;
  }
  get state(): VpsState {
    return this.stateValue;
  }
  get channel(): AgentChannel {
    return this.channelValue;
  }

  info(): VpsInfo {
    return { ...this.vpsInfo, state: this.stateValue };
  }

  /** Its network, once linked up after the start (a VPS in a user namespace, RuncEngine.create). */
  setNetwork(network: VpsInfo['network']): void {
    this.vpsInfo = { ...this.vpsInfo, network };
  }

  transition(op: VpsOp): void {
    this.stateValue = next(op, this.stateValue);
  }

  usage(): Promise<CgroupUsage> {
    return this.cgroup.usage();
  }

  async writeFile(path: string, content: Buffer, mode?: number, owner?: string): Promise<void> {
    next('writeFile', this.stateValue);
    if (!path.startsWith('/')) throw new RunboxError('invalid_argument', `file path must be absolute: "${path}"`);
    if (path.includes('\0')) throw new RunboxError('invalid_argument', 'file path must not contain NUL bytes');
    const frames = encodeFileWrite({ path, content, mode, owner });
    for (const f of frames) {
      const reply = this.channel.waitFor(
        (x): x is Extract<AgentFrame, { type: 'fileWritten' }> => x.type === 'fileWritten',
        `answer to writing ${path}`,
        30_000,
      );
      await this.channel.send(f);
      const r = await reply;
      if (r.errno !== 0) throw new RunboxError('invalid_argument', `cannot write ${path} in the VPS: ${r.message}`);
    }
  }

  /** Host pid of the VPS's init (the agent), set by the engine after start and restore. */
  initPid?: number;

  /**
   * What the host sees of the VPS's init once its pipes broke (for the log): whether it still
   * runs, and whether its stdin/stdout are this host's pipes (a restore that did not map them
   * leaves a live agent talking to pipes nobody reads).
   */
  diagnose(): Record<string, string | number | undefined> {
    const pid = this.initPid;
    const read = (f: () => string) => {
      try {
        return f();
      } catch {
        return undefined;
      }
    };
    const stat = pid ? read(() => fs.readFileSync(`/proc/${pid}/stat`, 'utf8')) : undefined;
    return {
      initPid: pid,
      initState: stat ? stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) : 'gone',
      initStdin: pid ? read(() => fs.readlinkSync(`/proc/${pid}/fd/0`)) : undefined,
      initStdout: pid ? read(() => fs.readlinkSync(`/proc/${pid}/fd/1`)) : undefined,
      hostControlPipe: this.channel.pipes.control,
      hostOutputPipe: this.channel.pipes.output,
    };
  }

  /**
   * Sets the hostname of a running VPS (a pooled VPS gets the job's hostname). Root inside lacks
   * CAP_SYS_ADMIN for sethostname, so the host does it from within the VPS's UTS namespace.
   */
  async setHostname(name: string): Promise<void> {
    if (!this.initPid) throw new RunboxError('internal', `VPS ${this.id} has no known init process`);
    await execOk(['nsenter', '--target', String(this.initPid), '--uts', 'hostname', name], { timeoutMs: 10_000 });
    this.vpsInfo = { ...this.vpsInfo, spec: { ...this.vpsInfo.spec, hostname: name } };
    await this.onSpecChange?.(this.vpsInfo.spec);
  }

  /** Set by the engine: records a changed spec (vps.json), so that what it says stays true. */
  onSpecChange?: (spec: VpsInfo['spec']) => Promise<void>;

  /**
   * Collects files from inside the VPS through the agent (G, answered by F/B frames and Z): the
   * agent resolves every path in the VPS's own mount namespace and never follows a symlink it
   * meets, so a job cannot make this read a host file. Allowed whenever writeFile is (ready,
   * running, exited); collections on one VPS run one after the other.
   */
  async collect(patterns: string[], opts: CollectOptions): Promise<CollectResult> {
    next('writeFile', this.stateValue);
    let request: Buffer;
    try {
      request = encodeCollect({ patterns, maxBytes: opts.maxBytes, maxFiles: opts.maxFiles });
    } catch (e) {
      throw new RunboxError('invalid_argument', `cannot collect ${JSON.stringify(patterns)}: ${(e as Error).message}`);
    }
    const previous = this.collectTail;
    let streamDone!: () => void;
    this.collectTail = new Promise<void>((resolve) => (streamDone = resolve));
    return collectThrough(this.channel, request, patterns, opts, previous, streamDone);
  }

  /** Kills every process of the VPS from the host (does not trust the agent to do it). */
  async killAll(): Promise<void> {
    await runcKill(this.runc, this.id, 'KILL');
  }

  /** Replaces the channel (after a restore); called by the checkpoint code. */
  beginSwap(): void {
    this.swapping = true;
  }
  endSwap(channel: AgentChannel | undefined): void {
    if (channel) {
      this.channelValue.close();
      this.channelValue = channel;
    }
    this.swapping = false;
    this.onChannelSwap?.();
  }

  async run(job: JobRun): Promise<RunResult> {
    if (this.jobStarted) throw new RunboxError('conflict', `VPS ${this.id} already ran a job; a VPS serves exactly one job`);
    this.transition('run');
    this.jobStarted = true;
    return this.supervise(job, { sendSpec: true, startOffset: 0 });
  }

  /**
   * Takes over a job that is already running in this VPS (restored from a checkpoint or migrated
   * here): no spec is sent; output offsets continue from `startOffset`; `job.timeoutSec` is what is
   * left of the job's time.
   */
  async adopt(job: JobRun & { onResume?: (offset: number) => void | Promise<void> }, from: { startedAt: string }): Promise<RunResult> {
    if (this.jobStarted) throw new RunboxError('conflict', `VPS ${this.id} already runs a job`);
    if (this.stateValue === 'creating') this.transition('markReady');
    this.transition('run');
    this.jobStarted = true;
    return this.supervise(job, { sendSpec: false, startOffset: 0, startedAt: from.startedAt, resume: job.onResume ?? (() => undefined) });
  }

  /** The job moved to another host: the pending run() returns `migrated` instead of waiting for an exit. */
  handOver(): void {
    this.handedOver = true;
    this.onHandOver?.();
  }

  private handedOver = false;
  private onHandOver?: () => void;

  /** The job left this VPS (handOver was called): whatever it still does is no longer the job's. */
  get isHandedOver(): boolean {
    return this.handedOver;
  }

  private async supervise(
    job: JobRun,
    o: { sendSpec: boolean; startOffset: number; startedAt?: string; resume?: (offset: number) => void | Promise<void> },
  ): Promise<RunResult> {
    const t0 = Date.now();
    let startedAt = o.startedAt ?? new Date(t0).toISOString();
    let outputBytes = o.startOffset;
    // Adopting a restored VPS: output that arrives before the agent says how much it has written
    // (Q/q) is held back; the answer minus those bytes is where the output resumes.
    let held: Array<Extract<AgentFrame, { type: 'stdout' | 'stderr' }>> | undefined = o.resume ? [] : undefined;
    let resuming = false;
    let truncated = false;
    let timedOut = false;
    let canceled = false;
    let exited: Extract<AgentFrame, { type: 'exited' }> | undefined;
    const diagnostics: string[] = [];

    const onFrame = (f: AgentFrame) => {
      if (held && (f.type === 'stdout' || f.type === 'stderr')) held.push(f);
      else if (held && f.type === 'outputTotal' && !resuming) {
        resuming = true;
        outputBytes = f.bytes - held.reduce((n, x) => n + x.data.length, 0);
        // Keep holding (in order) until the caller has cut its log back to the resume offset.
        void Promise.resolve()
          .then(() => o.resume?.(outputBytes))
          .catch((e: unknown) => this.log.error({ err: e }, 'cutting the log back to the resume offset failed'))
          .then(() => {
            const early = held ?? [];
            held = undefined;
            early.forEach(onFrame);
          });
      } else if (f.type === 'started') startedAt = new Date().toISOString();
      else if (f.type === 'stdout' || f.type === 'stderr') {
        const room = Math.max(0, job.outputBytes - outputBytes);
        const data = f.data.length > room ? f.data.subarray(0, room) : f.data;
        if (data.length < f.data.length) truncated = true;
        if (data.length > 0) {
          job.onOutput?.(f.type, data, outputBytes);
          outputBytes += data.length;
        }
      } else if (f.type === 'diagnostic') diagnostics.push(f.message);
      else if (f.type === 'exited') exited = f;
    };

    const kill = (why: 'timeout' | 'cancel') => {
      if (exited) return;
      if (why === 'timeout') timedOut = true;
      else canceled = true;
      this.killAll().catch((e) => this.log.warn({ err: e }, 'kill failed'));
    };
    const timer = setTimeout(() => kill('timeout'), job.timeoutSec * 1000);
    const onAbort = () => kill('cancel');
    job.signal?.addEventListener('abort', onAbort);
    if (job.signal?.aborted) onAbort();

    // The job ends with the agent's X frame, or when the VPS dies (its output pipe hits EOF)
    // outside of a checkpoint/restore swap.
    let off = () => {};
    const ended = new Promise<void>((resolve) => {
      const bind = () => {
        off();
        const ch = this.channel;
        off = ch.on((f) => {
          onFrame(f);
          if (f.type === 'exited') resolve();
        });
        void ch.whenClosed().then(() => {
          if (!this.swapping && ch === this.channel) resolve();
        });
      };
      this.onChannelSwap = bind;
      this.onHandOver = resolve;
      bind();
    });

    if (o.resume) await this.channel.send(encodeOutputQuery());
    if (o.sendSpec) {
      try {
        await this.channel.send([
          encodeJob({ argv: job.argv, env: job.env ?? {}, workdir: job.workdir, user: job.user }),
          ...encodeStdin(job.stdin ?? Buffer.alloc(0)),
          encodeStdinClose(),
        ]);
      } catch (e) {
        if (!this.channel.closed) throw e; // a VPS that died at once is reported below as lost
      }
    }
    await ended;
    clearTimeout(timer);
    job.signal?.removeEventListener('abort', onAbort);
    this.onChannelSwap = undefined;
    this.onHandOver = undefined;
    // Handed over: nothing this VPS still says may reach the job's output (it lives elsewhere now).
    if (this.handedOver) off();
    if (this.handedOver) {
      return {
        exitCode: null, signal: null, oomKilled: false, timedOut: false, canceled: false, outputTruncated: truncated, outputBytes,
        migrated: true, usage: { cpuMs: 0, memoryPeakBytes: 0, wallMs: Date.now() - t0 }, startedAt, finishedAt: new Date().toISOString(),
      };
    }

    const usage = await this.cgroup.usage().catch(() => undefined);
    // A VPS destroyed while its job ran is already on its way out; there is no "exited" to record.
    if (this.stateValue === 'running') this.transition('markExited');
    const x = exited as Extract<AgentFrame, { type: 'exited' }> | undefined;
    const startFailed = x !== undefined && x.signal === 0 && (x.code === 127 || x.code === 126) && diagnostics.length > 0;
    const result: RunResult = {
      exitCode: x && x.code >= 0 ? x.code : null,
      signal: x && x.signal > 0 ? x.signal : timedOut || canceled ? 9 : null,
      oomKilled: (usage?.oomKills ?? 0) > 0,
      timedOut,
      canceled,
      outputTruncated: truncated,
      outputBytes,
      usage: {
        cpuMs: Math.round(usage?.cpuMs ?? (x ? x.cpuUs / 1000 : 0)),
        memoryPeakBytes: usage?.memoryPeakBytes ?? (x ? x.maxRssKiB * 1024 : 0),
        wallMs: Date.now() - t0,
      },
      startedAt,
      finishedAt: new Date().toISOString(),
    };
    if (startFailed) result.error = { code: 'start_failed', message: diagnostics.join('; ') };
    else if (!x && !timedOut && !canceled) {
      result.error = { code: 'vps_lost', message: `the VPS ended without reporting an exit status${this.channel.diagnostics ? `: ${this.channel.diagnostics}` : ''}` };
    }
    return result;
  }

  /**
   * Total output bytes the agent has written (its counter survives checkpoint/restore). Output
   * frames that arrive before the answer were written before it, so the caller can tell where a
   * restored VPS's output resumes.
   */
  async queryOutputTotal(timeoutMs = 10_000): Promise<number> {
    const answer = this.channel.waitFor((f): f is Extract<AgentFrame, { type: 'outputTotal' }> => f.type === 'outputTotal', 'output total', timeoutMs);
    await this.channel.send(encodeOutputQuery());
    return (await answer).bytes;
  }
}
