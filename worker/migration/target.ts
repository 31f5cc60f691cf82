import fs from 'node:fs/promises';
import path from 'node:path';
import { errorMessage, isRunboxError, RunboxError } from '../../core/errors.js';
import { newId } from '../../core/ids.js';
import type { Logger } from '../../core/log.js';
import { instanceHost } from '../../core/store/leases.js';
import { startLazyPages, type LazyPages } from '../../runtime/checkpoint/lazy.js';
import { transferDir } from '../../runtime/gc.js';
import type { RuncVps } from '../../runtime/runc-vps.js';
import { ensureTemplateVersion } from '../../runtime/templates/builder.js';
import { DEFAULT_RECIPES_DIR } from '../../runtime/templates/recipes.js';
import { claim, claimNonce, handBack } from './claim.js';
import type { MigrationDeps } from './deps.js';
import { NoFaults } from './faults.js';
import { receiveFiles } from './files.js';
import { ANSWER_TIMEOUT_MS, checkEnvelope, checkpointFiles, nonceTtlMs, PAGES_TIMEOUT_MS, parseMessage, type Move, type Moving, type Prepare, type Release } from './protocol.js';
import { ChannelServer, within, type ChannelRequest } from './transport.js';

/** How long a target keeps a VPS it prepared for a move that has not arrived (the source's dump may take minutes). */
const PREPARED_TTL_MS = 600_000;

/**
 * Target side of live migration: accepts moves from other hosts on the migration channel.
 *
 *   prepare: have the checkpoint's template version (build it from the recipe if that makes
 *            exactly this version), make the VPS's network → answer
 *   move:    receive the checkpoint's files → restore (same address, same hostname, the job's own
 *            network configuration) on the disk image that came → claim the job → answer →
 *            supervise the job to its end
 */
export class MigrationServer {
  private channel?: ChannelServer;
  port = 0;
  /**
   * VPSs prepared for moves that have not arrived yet (by `<jobId>/<source VPS id>`), with the id
   * they have here, the migration they are for and their expiry. An arriving VPS gets an id of
   * this host's own: the same id may still be in use here (a job that left this host a moment
   * ago can still be serving its memory pages from it, post-copy, when it is moved back).
   */
  private readonly preparedVps = new Map<string, { localId: string; migrationId: string; expiry: NodeJS.Timeout }>();

  constructor(private readonly d: MigrationDeps) {}

  /** Listens on this host's advertised address (never on every address); `port` 0: any free one. */
  async listen(port: number): Promise<number> {
    this.channel = new ChannelServer({ credentials: this.d.credentials, hosts: this.d.hosts, log: this.d.log, onRequest: (r) => this.handle(r) });
    this.port = await this.channel.listen(this.d.address ?? '127.0.0.1', port);
    return this.port;
  }

  async close(): Promise<void> {
    await this.channel?.close();
    await Promise.all([...this.preparedVps.keys()].map((id) => this.release(id)));
  }

  private async handle(req: ChannelRequest): Promise<void> {
    let move: Move | undefined;
    try {
      const message = parseMessage(req.line);
      checkEnvelope(message, { peer: req.peer.id, self: this.d.hostId, now: Date.now() });
      if (!(await claimNonce(this.d.redis, this.d.keys, message.nonce, nonceTtlMs(message, Date.now())))) {
        throw new RunboxError('invalid_argument', 'migration refused: this request was seen before (a replay)');
      }
      if (message.kind === 'release') return await this.onRelease(req, message);
      if (message.kind === 'prepare') return await this.onPrepare(req, message);
      if (message.pageServer && message.pageServer.address !== req.peer.address) {
        throw new RunboxError('invalid_argument', `migration refused: the page server must be on the source's own address (${req.peer.address})`);
      }
      move = message;
    } catch (e) {
      this.d.log.warn({ err: e, peer: req.peer.id }, 'migration request refused');
      req.answer({ ok: false, code: isRunboxError(e) ? e.code : 'internal', message: errorMessage(e) });
      return;
    }
    await this.onMove(req, move);
  }

  private async onRelease(req: ChannelRequest, m: Release): Promise<void> {
    // Only a VPS prepared for this very move (never one that runs).
    const key = `${m.jobId}/${m.vpsId}`;
    if (this.preparedVps.get(key)?.migrationId === m.migrationId) await this.release(key);
    req.answer({ ok: true });
  }

  private async onPrepare(req: ChannelRequest, m: Prepare): Promise<void> {
    if ((await (this.d.faults ?? NoFaults).at(m.jobId)) === 'prepare') throw new RunboxError('checkpoint_incompatible', 'injected fault: the target cannot have the template version');
    if (this.d.running.byId.has(m.jobId)) throw new RunboxError('conflict', `job ${m.jobId} is still leaving ${this.d.hostId}; move it here again in a moment`);
    const template = await this.templateVersion(m.template, true);
    if (m.vps) await this.prepareVps(m.jobId, m.migrationId, m.vps, template);
    req.answer({ ok: true, postCopy: this.d.postCopy, runtime: this.d.engine.ociRuntime.kind, userns: await this.d.engine.usernsEnabled() });
  }

  /** Makes the network of an incoming VPS while its job still runs on the source (see RuncEngine.prepareRestore). */
  private async prepareVps(jobId: string, migrationId: string, vps: Moving, template: Awaited<ReturnType<MigrationServer['templateVersion']>>): Promise<void> {
    const key = `${jobId}/${vps.vpsId}`;
    const localId = this.forgetPrepared(key) ?? newId();
    await this.d.engine.prepareRestore(localId, { ...vps.spec, template }, { network: vps.network.mode, diskMb: vps.spec.diskMb, address: vps.network.address });
    this.preparedVps.set(key, { localId, migrationId, expiry: setTimeout(() => void this.release(key), PREPARED_TTL_MS) });
  }

  /** Stops tracking a prepared VPS (its expiry included) and returns its id here; the VPS itself stays. */
  private forgetPrepared(key: string): string | undefined {
    const had = this.preparedVps.get(key);
    clearTimeout(had?.expiry);
    this.preparedVps.delete(key);
    return had?.localId;
  }

  /** Destroys a prepared VPS whose move did not come. */
  private async release(key: string): Promise<void> {
    const vpsId = this.forgetPrepared(key);
    if (vpsId && !this.d.engine.get(vpsId)) await this.d.engine.destroy(vpsId).catch((e: unknown) => this.d.log.warn({ err: e, vpsId }, 'releasing a prepared VPS failed'));
  }

  private templateVersion(t: { name: string; hash: string }, build: boolean) {
    return ensureTemplateVersion(t.name, t.hash, {
      build,
      recipesDir: this.d.recipesDir ?? DEFAULT_RECIPES_DIR,
      templatesDir: this.d.engine.layout.templatesDir,
      stateDirs: [this.d.engine.layout.stateDir],
      log: this.d.log.child({ template: t.name }),
    });
  }

  private async onMove(req: ChannelRequest, header: Move): Promise<void> {
    const faults = this.d.faults ?? NoFaults;
    let dir: string | undefined;
    let localId: string | undefined;
    /** The lease's holder before this host took it for the move (given back if the move fails here). */
    let leaseFrom: string | undefined;
    let pagesStarted: Promise<LazyPages> | undefined;
    let keepDir = false;
    try {
      // The move came: its prepared VPS (if any) is create()'s now, or destroyed below on failure.
      const key = `${header.jobId}/${header.vpsId}`;
      localId = (this.preparedVps.get(key)?.migrationId === header.migrationId ? this.forgetPrepared(key) : undefined) ?? newId();
      const log = this.d.log.child({ jobId: header.jobId, vpsId: localId, migration: header.migrationId });
      // The same template content, or no restore at all (hashes name contents). Prepared already.
      const template = await this.templateVersion(header.spec.template, false);
      dir = await transferDir(this.d.engine.layout.transfersDir, `in-${header.jobId}`);
      // Only the expected files, each within its cap (the job's memory and disk limits), in time.
      await within(receiveFiles(req.reader, checkpointFiles(dir, header.spec)), ANSWER_TIMEOUT_MS, () => {
        const e = new RunboxError('unavailable', `the checkpoint did not arrive within ${ANSWER_TIMEOUT_MS} ms`);
        req.abort(e);
        return e;
      });
      req.done();
      if ((await faults.at(header.jobId)) === 'restore') throw new RunboxError('internal', 'injected fault: restore on the target failed');
      const imagesDir = path.join(dir, 'images');
      const workDir = path.join(dir, 'lazy-work');
      if (header.mode === 'post-copy') {
        if (!this.d.postCopy || !this.d.engine.runc.criu || !header.pageServer) throw new RunboxError('host_unsupported', 'this host does not do post-copy migration');
        // The daemon connects to the source while the layer and netns are made (create awaits it).
        pagesStarted = startLazyPages(this.d.engine.runc.criu, { imagesDir, workDir, source: header.pageServer });
        pagesStarted.catch(() => undefined); // awaited by create, or stopped below
      }
      // A job that left this host a moment ago can still be held here (a post-copy source keeps it
      // until its last page was fetched): one host never holds a job twice.
      if (this.d.running.byId.has(header.jobId) || this.d.running.incoming.has(header.jobId)) {
        await pagesStarted?.then((p) => p.stop(), () => undefined);
        throw new RunboxError('conflict', `job ${header.jobId} is still leaving ${this.d.hostId}; move it here again in a moment`);
      }
      if (!(await claim(this.d.redis, this.d.keys, header.migrationId, 'target'))) {
        await pagesStarted?.then((p) => p.stop(), () => undefined);
        throw new RunboxError('conflict', 'the source took the job back');
      }
      // The job's lease, from exactly its source's worker: had another host recovered the job
      // meanwhile (the source looked dead), the lease is that host's and this copy must not run.
      const holder = (await this.d.leases.get(header.jobId))?.holder ?? '';
      if (instanceHost(holder) !== header.from || !(await this.d.leases.claim(header.jobId, holder, this.d.instance)).ok) {
        await pagesStarted?.then((p) => p.stop(), () => undefined);
        throw new RunboxError('conflict', `job ${header.jobId} is no longer held by ${header.from}`);
      }
      leaseFrom = holder;
      this.d.running.incoming.add(header.jobId);
      const vps = await this.d.engine.create(localId, { ...header.spec, template }, {
        imagesDir,
        disk: { path: path.join(dir, 'disk.img'), move: true },
        address: header.network.address,
        lazyPagesWorkDir: pagesStarted && workDir,
        lazyPagesReady: pagesStarted,
      });
      const resumedAt = Date.now();
      log.info({ frozenMs: resumedAt - header.frozenAt, mode: header.mode }, 'migrated in');
      req.answer({ ok: true, resumedAt });
      const pages = await pagesStarted;
      // Post-copy: the job's end counts only once every page has arrived (see afterPages).
      const gate = pages?.done.then(() => true, () => false);
      const fault = await faults.at(header.jobId);
      if (fault === 'channel') vps.channel.close();
      if (fault === 'kill' && vps.initPid) process.kill(vps.initPid, 'SIGKILL');
      const adopted = this.d.adopt(header.jobId, vps, `migrated from ${header.from} (${header.mode})`, gate);
      if (fault === 'crash') setTimeout(() => process.kill(process.pid, 'SIGKILL'), 300);
      if (pages) {
        // The images dir stays until every page has arrived (the lazy-pages daemon reads it).
        keepDir = true;
        void this.afterPages(pages, header, vps, adopted, dir, log);
      }
    } catch (e) {
      this.d.log.warn({ err: e, jobId: header.jobId }, 'incoming migration failed');
      await pagesStarted?.then((p) => p.stop(), () => undefined);
      if (localId) await this.d.engine.destroy(localId).catch(() => undefined);
      // The lease first, then the claim: the source takes its job back only holding its lease.
      if (leaseFrom !== undefined) await this.d.leases.claim(header.jobId, this.d.instance, leaseFrom).catch(() => undefined);
      this.d.running.incoming.delete(header.jobId);
      // Hand the claim back, so the source may bring the job back to life.
      await handBack(this.d.redis, this.d.keys, header.migrationId);
      req.answer({ ok: false, code: isRunboxError(e) ? e.code : 'internal', message: errorMessage(e) });
    } finally {
      if (dir && !keepDir) await fs.rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * Post-copy, once the job runs here: waits for the last page. If the source stops serving before
   * that (it died, or the network broke), the restored processes must not run on: pages that never
   * came would read as zeros. The job is then handled like one whose host crashed: its VPS here is
   * destroyed and it resumes from its last checkpoint (or ends host_lost without one).
   */
  private async afterPages(pages: LazyPages, header: Move, vps: RuncVps, adopted: Promise<void>, dir: string, log: Logger): Promise<void> {
    // A source that stalls without closing the connection (a network partition) must not leave the
    // job blocked on its page faults for good: past the deadline the daemon is stopped, a failure.
    const deadline = setTimeout(() => void pages.stop(), PAGES_TIMEOUT_MS);
    try {
      await pages.done;
      log.debug('post-copy: every page arrived');
    } catch (e) {
      log.error({ err: e }, 'post-copy: the source stopped serving memory before every page arrived; resuming the job from its last checkpoint');
      // Its supervision ends without a result and stops taking its output; then it is killed at once
      // (pages that never came read as zeros) and destroyed.
      vps.handOver();
      await vps.killAll().catch((err: unknown) => log.warn({ err }, 'killing the VPS failed'));
      await adopted.catch(() => undefined);
      await this.d.recover(header.jobId, `its source ${header.from} stopped serving its memory during a post-copy move`).catch((err: unknown) => log.error({ err }, 'recovery failed'));
    } finally {
      clearTimeout(deadline);
      await pages.stop();
      await fs.rm(dir, { recursive: true, force: true });
    }
  }
}
