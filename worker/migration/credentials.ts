import { createPrivateKey, X509Certificate } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import { execOk } from '../../runtime/exec.js';

/**
 * A host's identity on the migration channel: a private key and its X.509 certificate.
 *
 * Zero configuration (`runbox up`, `runbox cluster up`): each host makes a self-signed P-256
 * certificate under its state dir (`migration/key.pem`, 0600) on first start and publishes the
 * certificate's SHA-256 fingerprint in its Redis heartbeat; peers accept exactly the certificates
 * live hosts publish (Redis is the cluster's trust root already: it holds every job).
 * With a PKI (`RUNBOX_MIGRATION_CA`, `_CERT`, `_KEY`): certificates must also be signed by that CA
 * and name their host id (subject CN or a DNS subjectAltName).
 * Node's crypto cannot sign X.509 certificates, so `openssl` (Debian package openssl) makes them.
 */
export interface MigrationCredentials {
  key: string;
  cert: string;
  /** PEM of the CA(s) peers' certificates must be signed by; absent: fingerprints alone. */
  ca?: string;
  /** SHA-256 fingerprint of `cert` (`AB:CD:…`), as the heartbeat publishes it. */
  fingerprint: string;
}

export interface CredentialFiles {
  ca?: string;
  cert?: string;
  key?: string;
}

/** Regenerated this long before a self-made certificate expires. */
const RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000;
const VALID_DAYS = 3650;

/** argv of openssl making a self-signed P-256 certificate for `cn` (pure). */
export function selfSignedArgs(keyPath: string, certPath: string, cn: string): string[] {
  const safe = cn.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 64) || 'runbox';
  return [
    'openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyPath, '-out', certPath, '-days', String(VALID_DAYS), '-subj', `/CN=${safe}`,
    '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'keyUsage=critical,digitalSignature',
    '-addext', 'extendedKeyUsage=serverAuth,clientAuth', '-addext', `subjectAltName=DNS:${safe}`,
  ];
}

/** This host's credentials: the configured files, or (made on first use) its own under `stateDir`. */
export async function loadCredentials(o: { stateDir: string; hostId: string; files: CredentialFiles; log: Logger }): Promise<MigrationCredentials> {
  if (o.files.cert && o.files.key) return configured(o.files, o.hostId, o.log);
  return selfMade(path.join(o.stateDir, 'migration'), o.hostId, o.log);
}

async function configured(files: CredentialFiles, hostId: string, log: Logger): Promise<MigrationCredentials> {
  const read = (what: string, p: string) =>
    fs.readFile(p, 'utf8').catch((e: unknown) => {
      throw new RunboxError('invalid_argument', `RUNBOX_MIGRATION_${what}: cannot read ${p}: ${(e as Error).message}`);
    });
  const [cert, key, ca] = await Promise.all([read('CERT', files.cert!), read('KEY', files.key!), files.ca ? read('CA', files.ca) : undefined]);
  const mode = (await fs.stat(files.key!)).mode & 0o077;
  if (mode) log.warn({ key: files.key }, 'the migration key file is readable by other users than its owner (chmod 600 it)');
  const x = check(cert, key, 'RUNBOX_MIGRATION_CERT');
  if (ca) {
    const signed = splitPem(ca).some((c) => x.checkIssued(c) && x.verify(c.publicKey));
    if (!signed) throw new RunboxError('invalid_argument', 'RUNBOX_MIGRATION_CERT is not signed by RUNBOX_MIGRATION_CA');
    if (!namesHost(x, hostId)) throw new RunboxError('invalid_argument', `RUNBOX_MIGRATION_CERT does not name this host (${hostId}) as its subject CN or a DNS subjectAltName`);
  }
  return { cert, key, ca, fingerprint: x.fingerprint256 };
}

async function selfMade(dir: string, hostId: string, log: Logger): Promise<MigrationCredentials> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
  const keyPath = path.join(dir, 'key.pem');
  const certPath = path.join(dir, 'cert.pem');
  const existing = await Promise.all([fs.readFile(certPath, 'utf8'), fs.readFile(keyPath, 'utf8')]).catch(() => undefined);
  if (existing) {
    try {
      const x = check(existing[0], existing[1], certPath);
      if (Date.parse(x.validTo) - Date.now() > RENEW_BEFORE_MS) {
        await fs.chmod(keyPath, 0o600);
        return { cert: existing[0], key: existing[1], fingerprint: x.fingerprint256 };
      }
    } catch (e) {
      log.warn({ err: e, dir }, 'the migration key or certificate is unusable; making new ones');
    }
  }
  // Made under temporary names, then renamed: a crash never leaves half a pair. The key file is
  // created 0600 before openssl writes into it (it keeps the mode).
  const tmpKey = `${keyPath}.${process.pid}.tmp`;
  const tmpCert = `${certPath}.${process.pid}.tmp`;
  await fs.rm(tmpKey, { force: true });
  await (await fs.open(tmpKey, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600)).close();
  try {
    await execOk(selfSignedArgs(tmpKey, tmpCert, hostId), { timeoutMs: 30_000 }).catch((e: unknown) => {
      throw new RunboxError('host_unsupported', `cannot make this host's migration certificate with openssl (apt-get install openssl): ${(e as Error).message}`);
    });
    const cert = await fs.readFile(tmpCert, 'utf8');
    const key = await fs.readFile(tmpKey, 'utf8');
    const x = check(cert, key, tmpCert);
    await fs.rename(tmpKey, keyPath);
    await fs.rename(tmpCert, certPath);
    log.info({ dir, fingerprint: x.fingerprint256 }, 'made this host\'s migration certificate');
    return { cert, key, fingerprint: x.fingerprint256 };
  } finally {
    await fs.rm(tmpKey, { force: true });
    await fs.rm(tmpCert, { force: true });
  }
}

/** Parses the certificate and checks that the key is its key. */
function check(cert: string, key: string, what: string): X509Certificate {
  let x: X509Certificate;
  try {
    x = new X509Certificate(cert);
  } catch (e) {
    throw new RunboxError('invalid_argument', `${what}: not a PEM certificate (${(e as Error).message})`);
  }
  let ok = false;
  try {
    ok = x.checkPrivateKey(createPrivateKey(key));
  } catch {
    ok = false;
  }
  if (!ok) throw new RunboxError('invalid_argument', `${what}: the key does not belong to the certificate`);
  if (Date.parse(x.validTo) <= Date.now()) throw new RunboxError('invalid_argument', `${what}: the certificate expired on ${x.validTo}`);
  return x;
}

function splitPem(pem: string): X509Certificate[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((p) => new X509Certificate(p));
}

/** Whether a certificate names `hostId` (subject CN, or a DNS subjectAltName). */
export function namesHost(x: { subject: string; subjectAltName?: string | undefined }, hostId: string): boolean {
  const cns = x.subject.split('\n').filter((l) => l.startsWith('CN=')).map((l) => l.slice(3));
  const dns = (x.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('DNS:')).map((s) => s.slice(4));
  return [...cns, ...dns].includes(hostId);
}
