import net from 'node:net';
import tls from 'node:tls';
import { RunboxError } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import type { Host } from '../../core/store/hosts.js';
import { namesHost, type MigrationCredentials } from './credentials.js';
import { sendFiles, type FileSpec } from './files.js';
import { MAX_LINE_BYTES, parseAnswer, type Answer } from './protocol.js';
import { SocketReader } from './reader.js';

/**
 * The migration channel: mutual TLS 1.3 between hosts, each authenticated by its certificate
 * (credentials.ts), with a limit on every read and phase. A request is one line (protocol.ts),
 * maybe followed by files (files.ts); the answer is one line.
 *
 * Server side, before a peer is authenticated: at most PREAUTH_PER_ADDRESS connections per
 * address and PREAUTH_TOTAL in all (more are closed at once), HANDSHAKE_MS for the TLS handshake;
 * then the peer's certificate must be one a live host publishes, or the connection is destroyed
 * before a byte of it is read. Authenticated: the request line within LINE_IDLE_MS of silence and
 * LINE_DEADLINE_MS in all, at most MAX_LINE_BYTES.
 */
export const HANDSHAKE_MS = 10_000;
export const LINE_IDLE_MS = 10_000;
export const LINE_DEADLINE_MS = 15_000;
/** Silence allowed in the middle of a transfer (either side). */
export const TRANSFER_IDLE_MS = 30_000;
export const PREAUTH_PER_ADDRESS = 32;
export const PREAUTH_TOTAL = 256;
/** A burst of connections is accepted (and turned away) rather than left to the kernel's SYN cookies (capped by net.core.somaxconn). */
const LISTEN_BACKLOG = 4096;
/** How long the list of live hosts' fingerprints is trusted before it is read again ... */
const PEERS_TTL_MS = 1000;
/** ... and how soon again when an unknown certificate comes (a host that just started). */
const MISS_REFRESH_MS = 200;
/** Trailing bytes tolerated after a request (tar pads its stream to a whole record). */
const TRAILER_BYTES = 256 * 1024;

const CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';

/** Where a request goes: a host as its heartbeat describes it. */
export type PeerAddress = Pick<Host, 'id' | 'address' | 'migrationPort' | 'migrationFingerprint'>;

/** Rejects when `p` does not settle within `ms`, after calling `onTimeout`. */
export function within<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(onTimeout()), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Client side: connects to `to`, checks that it is the host whose certificate its heartbeat
 * publishes, sends `message` (and `files`), and returns the answer line, within `timeoutMs` in all.
 */
export function request(creds: MigrationCredentials, to: PeerAddress, message: object, o: { files?: readonly FileSpec[]; breakMidway?: boolean; timeoutMs: number }): Promise<Answer> {
  if (!to.address || !to.migrationPort) return Promise.reject(new RunboxError('unavailable', `host ${to.id} does not accept migrations`));
  if (!to.migrationFingerprint) return Promise.reject(new RunboxError('unavailable', `host ${to.id} publishes no migration certificate`));
  const sock = tls.connect({
    host: to.address,
    port: to.migrationPort,
    secureContext: clientContext(creds),
    // With a CA the chain is checked by TLS, and the name here; the fingerprint always, below.
    ...(creds.ca ? { rejectUnauthorized: true, checkServerIdentity: (_h: string, c: tls.PeerCertificate) => nameCheck(c, to.id) } : { rejectUnauthorized: false }),
  });
  // No Nagle: the request line and the last pieces of a stream go out at once (delayed ACKs would hold them ~40 ms).
  sock.setNoDelay(true);
  sock.setKeepAlive(true, 10_000);
  const exchange = new Promise<Answer>((resolve, reject) => {
    sock.on('error', reject);
    // Once connected, the reader reports a close (after any answer that came before it).
    let connected = false;
    sock.once('close', () => connected || reject(new RunboxError('unavailable', `host ${to.id} closed the connection during the TLS handshake`)));
    sock.once('secureConnect', () => {
      connected = true;
      const fp = sock.getPeerCertificate().fingerprint256;
      if (fp !== to.migrationFingerprint) {
        reject(new RunboxError('unavailable', `the peer at ${to.address}:${to.migrationPort} is not host ${to.id} (certificate ${fp ?? 'none'})`));
        sock.destroy();
        return;
      }
      const reader = new SocketReader(sock, o.timeoutMs);
      reader.line(MAX_LINE_BYTES).then(
        (l) => resolve(parseAnswer(l)),
        (e: unknown) => reject(new RunboxError('unavailable', `host ${to.id} closed the connection without an answer (${(e as Error).message})`)),
      );
      sock.write(`${JSON.stringify(message)}\n`);
      if (o.files) sendFiles(o.files, sock, { breakMidway: o.breakMidway }).catch(reject);
    });
  });
  return within(exchange, o.timeoutMs, () => new RunboxError('unavailable', `no answer from host ${to.id} within ${o.timeoutMs} ms`)).finally(() => sock.destroy());
}

/** One TLS context per identity (parsing the key and certificate for every connection costs milliseconds, inside a move's pause). */
const contexts = new WeakMap<MigrationCredentials, tls.SecureContext>();
function clientContext(creds: MigrationCredentials): tls.SecureContext {
  let c = contexts.get(creds);
  if (!c) contexts.set(creds, (c = tls.createSecureContext({ key: creds.key, cert: creds.cert, ca: creds.ca, minVersion: 'TLSv1.3', ciphers: CIPHERS })));
  return c;
}

function nameCheck(c: tls.PeerCertificate, hostId: string): Error | undefined {
  const subject = Object.entries(c.subject ?? {}).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => `${k}=${String(x)}`)).join('\n');
  return namesHost({ subject, subjectAltName: c.subjectaltname }, hostId) ? undefined : new Error(`the certificate does not name host ${hostId}`);
}

/** An authenticated request: its sender (a live host), its line, and the rest of its stream. */
export interface ChannelRequest {
  peer: Host;
  line: string;
  /** The bytes after the line (files.ts reads them), with TRANSFER_IDLE_MS as idle timeout. */
  reader: SocketReader;
  /** The request needs nothing more from the stream (end padding is dropped). */
  done(): void;
  /** Sends the answer line and closes the connection. */
  answer(a: Answer): void;
  /** Breaks the connection (a phase's deadline passed). */
  abort(e: Error): void;
}

export interface ChannelServerOptions {
  credentials: MigrationCredentials;
  /** Live hosts: a peer must present a certificate one of them publishes. */
  hosts: { list(): Promise<Host[]> };
  onRequest(req: ChannelRequest): Promise<void>;
  log: Logger;
}

/** Server side of the channel (see the limits above). */
export class ChannelServer {
  private server?: tls.Server;
  private preauth = new Map<string, number>();
  private preauthTotal = 0;
  /** Connections not authenticated yet, by `address:port`, with their admission slot (given back when authenticated or gone). */
  private slots = new Map<string, { raw: net.Socket; release: () => void }>();
  private peers = { at: 0, byFingerprint: new Map<string, Host>() };
  private refreshing?: Promise<void>;
  /** Connections not handed to a request handler yet (closed with the server). */
  private waiting = new Set<tls.TLSSocket>();

  constructor(private readonly o: ChannelServerOptions) {}

  /** Listens on `address` (this host's advertised address: never every address). */
  async listen(address: string, port: number): Promise<number> {
    const c = this.o.credentials;
    const server = tls.createServer({
      key: c.key,
      cert: c.cert,
      minVersion: 'TLSv1.3',
      ciphers: CIPHERS,
      requestCert: true,
      // With a CA, TLS itself refuses certificates it did not sign; the fingerprint is checked in any case.
      ...(c.ca ? { ca: c.ca, rejectUnauthorized: true } : { rejectUnauthorized: false }),
      handshakeTimeout: HANDSHAKE_MS,
    });
    this.server = server;
    // Before TLS gets the socket: over a limit, it is closed without a handshake.
    server.prependListener('connection', (raw: net.Socket) => this.admit(raw));
    server.on('secureConnection', (s: tls.TLSSocket) => void this.authenticate(s));
    // A failed (or timed-out) handshake: with this listener Node leaves the socket open; close it.
    server.on('tlsClientError', (e: Error, s: tls.TLSSocket) => {
      this.o.log.debug({ err: e }, 'migration channel: TLS handshake failed');
      s.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port, host: address, backlog: LISTEN_BACKLOG }, () => resolve());
    });
    server.on('error', (e) => this.o.log.error({ err: e }, 'migration channel: server error'));
    return (server.address() as net.AddressInfo).port;
  }

  /** Stops listening; connections still in their handshake or request line are closed, requests under way finish. */
  close(): Promise<void> {
    const closed = new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    for (const { raw } of this.slots.values()) raw.destroy();
    for (const s of this.waiting) s.destroy();
    return closed;
  }

  private admit(raw: net.Socket): void {
    const from = raw.remoteAddress ?? '?';
    const n = this.preauth.get(from) ?? 0;
    if (n >= PREAUTH_PER_ADDRESS || this.preauthTotal >= PREAUTH_TOTAL) {
      raw.destroy();
      return;
    }
    this.preauth.set(from, n + 1);
    this.preauthTotal++;
    let counted = true;
    const release = () => {
      if (!counted) return;
      counted = false;
      this.preauthTotal--;
      const left = (this.preauth.get(from) ?? 1) - 1;
      if (left > 0) this.preauth.set(from, left);
      else this.preauth.delete(from);
    };
    const key = `${from}:${raw.remotePort}`;
    this.slots.set(key, { raw, release });
    raw.once('close', () => {
      release();
      if (this.slots.get(key)?.raw === raw) this.slots.delete(key);
    });
  }

  /** The live host whose published certificate this is (the list is re-read at most every PEERS_TTL_MS). */
  private async peerOf(fingerprint: string | undefined): Promise<Host | undefined> {
    if (!fingerprint) return undefined;
    const age = Date.now() - this.peers.at;
    if (age > PEERS_TTL_MS || (!this.peers.byFingerprint.has(fingerprint) && age > MISS_REFRESH_MS)) {
      // One read of the list at a time, whoever asks.
      await (this.refreshing ??= this.o.hosts
        .list()
        .then((hosts) => {
          this.peers = { at: Date.now(), byFingerprint: new Map(hosts.filter((h) => h.migrationFingerprint).map((h) => [h.migrationFingerprint!, h])) };
        })
        .finally(() => (this.refreshing = undefined)));
    }
    return this.peers.byFingerprint.get(fingerprint);
  }

  private async authenticate(s: tls.TLSSocket): Promise<void> {
    s.on('error', (e) => this.o.log.debug({ err: e }, 'migration channel: connection error'));
    this.waiting.add(s);
    s.once('close', () => this.waiting.delete(s));
    let peer: Host | undefined;
    try {
      const x = s.getPeerX509Certificate();
      peer = await this.peerOf(x?.fingerprint256);
      if (peer && this.o.credentials.ca && !namesHost(x!, peer.id)) peer = undefined;
    } catch (e) {
      this.o.log.warn({ err: e }, 'migration channel: cannot read the live hosts');
    }
    if (!peer || s.destroyed) {
      this.o.log.debug({ from: s.remoteAddress }, 'migration channel: refused a peer that is no live host');
      s.destroy();
      return;
    }
    const key = `${s.remoteAddress}:${s.remotePort}`;
    this.slots.get(key)?.release();
    this.slots.delete(key);
    s.setNoDelay(true);
    s.setKeepAlive(true, 10_000);
    const reader = new SocketReader(s, LINE_IDLE_MS);
    let line: string;
    try {
      line = await within(reader.line(MAX_LINE_BYTES), LINE_DEADLINE_MS, () => new RunboxError('unavailable', `no request line within ${LINE_DEADLINE_MS} ms`));
    } catch (e) {
      this.o.log.warn({ err: e, peer: peer.id }, 'migration channel: no valid request line');
      s.destroy();
      return;
    }
    reader.idleMs = TRANSFER_IDLE_MS;
    this.waiting.delete(s);
    const req: ChannelRequest = {
      peer,
      line,
      reader,
      done: () => reader.discard(TRAILER_BYTES),
      answer: (a) => {
        reader.discard(TRAILER_BYTES);
        // A long error (a failed template build's output) is cut to what the answer schema takes.
        const message = a.message && a.message.length > 8192 ? `${a.message.slice(0, 8192)}…` : a.message;
        s.end(`${JSON.stringify({ ...a, ...(message === undefined ? {} : { message }) })}\n`);
      },
      abort: (e) => s.destroy(e),
    };
    await this.o.onRequest(req).catch((e: unknown) => {
      this.o.log.error({ err: e, peer: peer.id }, 'migration channel: request handling failed');
      s.destroy();
    });
  }
}
