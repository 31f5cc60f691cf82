import crypto from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { errorMessage, isRunboxError, RunboxError } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import { TemplateInfoSchema, type TemplateInfo } from '../../core/template.js';
import { TemplateNameSchema } from '../../core/vps-request.js';
import { exec } from '../exec.js';
import { isAlive, selfRef } from '../host/proc.js';
import type { TemplateRef } from './store.js';

/**
 * `runbox templates import NAME PATH`: an OCI image layout (directory or tar) or a `docker save`
 * tarball becomes the template <templatesDir>/<NAME>/<hash>/rootfs, hash = the first 16 hex digits
 * of the image manifest's digest (importing the same image again is a no-op).
 *
 * The format work is done by well-kept tools: skopeo converts a docker-archive into an OCI layout
 * (it reads the archive's members by name and never extracts them), umoci applies the layers in
 * order with whiteouts (it resolves every path, link target and symlink inside the rootfs, see
 * docs/OCI-IMPORT.md for what was verified). This module only selects the image, verifies the
 * manifest and config digests, extracts the regular files of an OCI layout tar (itself, because
 * skopeo's oci-archive extraction follows symlinks out of its directory), and publishes the result
 * atomically: everything is made in <NAME>/.import-* and renamed into place, or removed.
 */
export interface OciImportOptions {
  name: string;
  /** An OCI image layout directory, an OCI layout tar, or a `docker save` tarball (may be gzipped). */
  path: string;
  templatesDir: string;
  /** Which image when there are several: an OCI ref name (org.opencontainers.image.ref.name) or a docker RepoTag. */
  ref?: string;
  log?: Logger;
  /** Human progress lines (the CLI prints them). */
  progress?: (line: string) => void;
  umociPath?: string;
  skopeoPath?: string;
  /** Per tool run (default 30 min). */
  timeoutMs?: number;
}

export interface OciImportResult extends TemplateRef {
  info: TemplateInfo;
  /** The image manifest's digest (sha256:...). */
  digest: string;
  /** false when this image was already imported (only `current` was updated). */
  created: boolean;
}

interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  platform?: { os?: string; architecture?: string; variant?: string };
  annotations?: Record<string, string>;
}

interface ImageConfig {
  architecture?: string;
  os?: string;
  config?: { User?: string; Env?: string[] | null; WorkingDir?: string; Entrypoint?: string[] | null; Cmd?: string[] | null };
}

interface SelectedImage {
  manifestDesc: Descriptor;
  config: ImageConfig;
  layers: Descriptor[];
}

const MT = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
};
/** Layer media types umoci 0.4 unpacks. */
const LAYER_TYPES = new Set([
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
]);
const DIGEST = /^sha256:([a-f0-9]{64})$/;
const REF_NAME = 'org.opencontainers.image.ref.name';
const WORK_TAG = 'import';
const GOARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
const HOST_ARCH = GOARCH[process.arch] ?? process.arch;

const bad = (msg: string, cause?: unknown) => new RunboxError('invalid_argument', msg, cause === undefined ? undefined : { cause });

export async function importOciTemplate(o: OciImportOptions): Promise<OciImportResult> {
  if (!TemplateNameSchema.safeParse(o.name).success) {
    throw bad(`invalid template name "${o.name}" (lowercase letters, digits, . _ -; at most 64, starting with a letter or digit)`);
  }
  const src = path.resolve(o.path);
  const st = await fs.stat(src).catch(() => null);
  if (!st || !(st.isDirectory() || st.isFile())) throw bad(`${o.path}: no such image (an OCI image layout directory or tar, or a docker save tarball)`);
  const say = (line: string) => {
    o.log?.info({ template: o.name }, line);
    o.progress?.(line);
  };

  const tplDir = path.join(path.resolve(o.templatesDir), o.name);
  const madeTplDir = !(await exists(tplDir));
  await fs.mkdir(tplDir, { recursive: true });
  await removeStaleWork(tplDir, o.log);
  const me = selfRef();
  const work = await fs.mkdtemp(path.join(tplDir, `.import-${me.pid}-${me.start}-`));
  try {
    return await importInto(work, tplDir, src, st.isDirectory(), o, say);
  } catch (e) {
    throw isRunboxError(e) ? e : new RunboxError('internal', `importing ${o.path} failed: ${errorMessage(e)}`, { cause: e });
  } finally {
    await fs.rm(work, { recursive: true, force: true });
    // Nothing half-made: a template directory this import created and left empty goes too (rmdir
    // fails, harmlessly, when a concurrent import or build of the same name put something there).
    if (madeTplDir) await fs.rmdir(tplDir).catch(() => undefined);
  }
}

async function importInto(
  work: string,
  tplDir: string,
  src: string,
  isDir: boolean,
  o: OciImportOptions,
  say: (line: string) => void,
): Promise<OciImportResult> {
  const image = await prepareLayout(src, isDir, work, o, say);
  const digest = image.manifestDesc.digest;
  const hash = DIGEST.exec(digest)![1]!.slice(0, 16);
  const final = path.join(tplDir, hash);
  const existing = await readInfo(final);
  if (existing) {
    await setCurrent(tplDir, hash);
    say(`${o.name}: image ${digest} is already imported as ${hash}`);
    return { name: o.name, hash, rootfs: path.join(final, 'rootfs'), info: existing, digest, created: false };
  }

  say(`${o.name}: unpacking ${image.layers.length} layer(s) of ${digest} (${mb(image.layers.reduce((n, l) => n + (l.size ?? 0), 0))})`);
  // Relative paths with cwd = work: umoci and skopeo split their references at ':'.
  await tool([o.umociPath ?? 'umoci', 'unpack', '--image', `layout:${WORK_TAG}`, 'bundle'], work, o, 'cannot unpack the image');
  const out = path.join(work, 'out');
  await fs.mkdir(out, { mode: 0o700 });
  await fs.rename(path.join(work, 'bundle', 'rootfs'), path.join(out, 'rootfs'));
  await prepareRootfs(path.join(out, 'rootfs'));

  const info = TemplateInfoSchema.parse({
    name: o.name,
    hash,
    builtAt: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    sizeBytes: await duBytes(path.join(out, 'rootfs')),
    source: 'oci',
    description: `imported from ${path.basename(src)}${o.ref ? ` (${o.ref})` : ''}: image ${digest}`,
    defaults: defaultsOf(image.config),
  });
  await fs.writeFile(path.join(out, 'template.json'), `${JSON.stringify(info, null, 2)}\n`, { mode: 0o644 });
  // 0700: an image may carry setuid binaries or device nodes; host users must not reach them.
  await fs.chmod(out, 0o700);
  try {
    await fs.rename(out, final);
  } catch (e) {
    // Another import of the same image won the race: its result is the same content.
    const code = (e as NodeJS.ErrnoException).code;
    if ((code !== 'ENOTEMPTY' && code !== 'EEXIST') || !(await readInfo(final))) throw e;
  }
  await setCurrent(tplDir, hash);
  say(`${o.name}: imported ${digest} as ${hash} (${mb(info.sizeBytes)})`);
  return { name: o.name, hash, rootfs: path.join(final, 'rootfs'), info: (await readInfo(final)) ?? info, digest, created: true };
}

/** Makes <work>/layout an OCI layout whose index.json names exactly the selected image (tag "import"). */
async function prepareLayout(
  src: string,
  isDir: boolean,
  work: string,
  o: OciImportOptions,
  say: (line: string) => void,
): Promise<SelectedImage> {
  const layout = path.join(work, 'layout');
  if (isDir) {
    if (!(await exists(path.join(src, 'oci-layout'))) || !(await exists(path.join(src, 'index.json')))) {
      throw bad(`${o.path}: not an OCI image layout (no oci-layout and index.json; a docker save image must be given as its tarball)`);
    }
    // The layout's blobs are used in place (read-only) through a symlink: no copy of big layers.
    const image = await selectImage(src, o.ref, o.path);
    await fs.mkdir(layout);
    await fs.symlink(path.join(src, 'blobs'), path.join(layout, 'blobs'));
    await writeWorkIndex(layout, image.manifestDesc);
    return image;
  }

  const tar = path.join(work, 'input.tar');
  if (await isGzip(src)) {
    say(`decompressing ${path.basename(src)}`);
    await pipeline(createReadStream(src), zlib.createGunzip(), createWriteStream(tar, { flags: 'wx' })).catch((e: unknown) => {
      throw bad(`${o.path}: corrupted gzip data (${errorMessage(e)})`, e);
    });
  } else {
    await fs.symlink(src, tar);
  }
  const members = await readTarIndex(tar, o.path);

  const dockerManifest = members.get('manifest.json');
  if (dockerManifest) {
    // A docker save tarball (Docker >= 25 also adds an OCI layout; skopeo handles every variant).
    const list = parseJson(await readMember(tar, dockerManifest, 16 << 20), `${o.path}: manifest.json`) as unknown;
    if (!Array.isArray(list) || list.length === 0) throw bad(`${o.path}: manifest.json lists no image`);
    const tags = list.map((e: { RepoTags?: unknown }) => (Array.isArray(e?.RepoTags) ? e.RepoTags.filter((t): t is string => typeof t === 'string') : []));
    let index = 0;
    if (o.ref) {
      index = tags.findIndex((t) => t.some((tag) => tag === o.ref || tag === `${o.ref}:latest` || tag.endsWith(`/${o.ref}`)));
      if (index < 0) throw bad(`${o.path}: no image tagged "${o.ref}" (tags: ${tags.flat().join(', ') || 'none'})`);
    } else if (list.length > 1) {
      throw bad(`${o.path} holds ${list.length} images; choose one with --ref (tags: ${tags.flat().join(', ') || 'none'})`);
    }
    say(`converting docker save tarball ${path.basename(src)} to an OCI layout (skopeo)`);
    await fs.mkdir(path.join(work, 'tmp'));
    await tool(
      [o.skopeoPath ?? 'skopeo', '--tmpdir', 'tmp', '--insecure-policy', 'copy', '--quiet', `docker-archive:input.tar:@${index}`, `oci:layout:${WORK_TAG}`],
      work,
      o,
      `${o.path}: not a readable docker save tarball`,
    );
    const image = await selectImage(layout, WORK_TAG, o.path);
    await writeWorkIndex(layout, image.manifestDesc);
    return image;
  }

  if (members.has('oci-layout') && members.has('index.json')) {
    // An OCI layout tar: only its regular files at the places the layout spec defines are taken,
    // written to paths made here; every other member (links, ../x, /x) is ignored.
    say(`extracting OCI layout tar ${path.basename(src)}`);
    await fs.mkdir(path.join(layout, 'blobs', 'sha256'), { recursive: true });
    for (const [name, m] of members) {
      if (m.type !== '0') continue;
      const blob = /^blobs\/sha256\/([a-f0-9]{64})$/.exec(name);
      if (name !== 'oci-layout' && name !== 'index.json' && !blob) continue;
      await copyMember(tar, m, path.join(layout, ...name.split('/')));
    }
    await fs.rm(tar);
    const image = await selectImage(layout, o.ref, o.path);
    await writeWorkIndex(layout, image.manifestDesc);
    return image;
  }
  throw bad(`${o.path}: neither an OCI image layout (oci-layout, index.json) nor a docker save tarball (manifest.json)`);
}

/** Picks one image manifest from a layout: by ref, the only one, or the host's platform of an index. */
async function selectImage(layout: string, ref: string | undefined, label: string): Promise<SelectedImage> {
  await readJsonFile(path.join(layout, 'oci-layout'), `${label}: oci-layout`);
  const index = (await readJsonFile(path.join(layout, 'index.json'), `${label}: index.json`)) as { manifests?: Descriptor[] };
  const all = Array.isArray(index.manifests) ? index.manifests.filter(isDescriptor) : [];
  if (all.length === 0) throw bad(`${label}: index.json lists no image`);
  let desc: Descriptor;
  if (ref) {
    const hit = all.filter((d) => d.annotations?.[REF_NAME] === ref || d.annotations?.['io.containerd.image.name'] === ref);
    if (hit.length === 0) throw bad(`${label}: no image named "${ref}" (names: ${refNames(all)})`);
    desc = hit.length === 1 ? hit[0]! : pickPlatform(hit, label);
  } else if (all.length === 1) {
    desc = all[0]!;
  } else if (all.every((d) => d.platform)) {
    desc = pickPlatform(all, label);
  } else {
    throw bad(`${label} holds ${all.length} images; choose one with --ref (names: ${refNames(all)})`);
  }

  // Follow image indexes (multi-platform images) down to a manifest.
  for (let depth = 0; ; depth++) {
    const mediaType = desc.mediaType;
    if (mediaType === MT.index || mediaType === MT.dockerList) {
      if (depth >= 4) throw bad(`${label}: image indexes nested too deep`);
      const sub = (await readBlob(layout, desc, label)) as { manifests?: Descriptor[] };
      const entries = Array.isArray(sub.manifests) ? sub.manifests.filter(isDescriptor) : [];
      desc = pickPlatform(entries, label);
      continue;
    }
    if (mediaType === MT.dockerManifest) {
      throw bad(`${label}: the image uses Docker media types; convert it first (skopeo copy --format oci oci:SRC oci:DST) or import its docker save tarball`);
    }
    if (mediaType !== undefined && mediaType !== MT.manifest) throw bad(`${label}: ${desc.digest} is a ${mediaType}, not an image manifest`);
    break;
  }

  const manifest = (await readBlob(layout, desc, label)) as { mediaType?: string; config?: Descriptor; layers?: Descriptor[] };
  if (manifest.mediaType === MT.index) throw bad(`${label}: ${desc.digest} is an image index without a media type in its descriptor`);
  if (!manifest.config || !isDescriptor(manifest.config) || !Array.isArray(manifest.layers) || !manifest.layers.every(isDescriptor)) {
    throw bad(`${label}: malformed image manifest ${desc.digest}`);
  }
  if (manifest.config.mediaType !== undefined && manifest.config.mediaType !== MT.config) {
    throw bad(`${label}: ${desc.digest} is not a container image (config type ${manifest.config.mediaType})`);
  }
  for (const l of manifest.layers) {
    if (l.mediaType !== undefined && !LAYER_TYPES.has(l.mediaType)) {
      throw bad(`${label}: layer ${l.digest} has media type ${l.mediaType}; supported: tar and tar+gzip layers`);
    }
  }
  const config = (await readBlob(layout, manifest.config, label)) as ImageConfig;
  if ((config.os && config.os !== 'linux') || (config.architecture && config.architecture !== HOST_ARCH)) {
    throw bad(`${label}: the image is for ${config.os ?? '?'}/${config.architecture ?? '?'}; this host runs linux/${HOST_ARCH}`);
  }
  return { manifestDesc: { mediaType: MT.manifest, digest: desc.digest, size: desc.size }, config, layers: manifest.layers };
}

function pickPlatform(entries: Descriptor[], label: string): Descriptor {
  const hit = entries.find((d) => d.platform?.os === 'linux' && d.platform.architecture === HOST_ARCH);
  if (hit) return hit;
  const have = entries.map((d) => `${d.platform?.os ?? '?'}/${d.platform?.architecture ?? '?'}`).filter((p) => p !== 'unknown/unknown');
  throw bad(`${label}: the image index has no linux/${HOST_ARCH} image (platforms: ${[...new Set(have)].join(', ') || 'none'})`);
}

const refNames = (ds: Descriptor[]) => ds.map((d) => d.annotations?.[REF_NAME] ?? d.digest).join(', ');

function isDescriptor(d: unknown): d is Descriptor {
  return typeof d === 'object' && d !== null && typeof (d as Descriptor).digest === 'string';
}

/** Reads a JSON blob (at most 4 MiB) and checks its size and sha256 against the descriptor. */
async function readBlob(layout: string, desc: Descriptor, label: string): Promise<unknown> {
  const m = DIGEST.exec(desc.digest);
  if (!m) throw bad(`${label}: unsupported or malformed digest "${desc.digest}"`);
  const file = path.join(layout, 'blobs', 'sha256', m[1]!);
  const st = await fs.stat(file).catch(() => null);
  if (!st?.isFile()) throw bad(`${label}: blob ${desc.digest} is missing`);
  if (st.size > 4 << 20) throw bad(`${label}: blob ${desc.digest} is too big for a manifest or config (${st.size} bytes)`);
  const data = await fs.readFile(file);
  const actual = crypto.createHash('sha256').update(data).digest('hex');
  if (actual !== m[1] || (desc.size !== undefined && desc.size !== data.length)) {
    throw bad(`${label}: blob ${desc.digest} is corrupted (its content has digest sha256:${actual}, ${data.length} bytes)`);
  }
  return parseJson(data, `${label}: blob ${desc.digest}`);
}

async function writeWorkIndex(layout: string, desc: Descriptor): Promise<void> {
  if (!(await exists(path.join(layout, 'oci-layout')))) await fs.writeFile(path.join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const index = { schemaVersion: 2, manifests: [{ mediaType: MT.manifest, digest: desc.digest, size: desc.size, annotations: { [REF_NAME]: WORK_TAG } }] };
  const file = path.join(layout, 'index.json');
  await fs.rm(file, { force: true });
  await fs.writeFile(file, JSON.stringify(index));
}

function defaultsOf(config: ImageConfig): TemplateInfo['defaults'] {
  const c = config.config ?? {};
  const env: Record<string, string> = {};
  for (const kv of c.Env ?? []) {
    const i = typeof kv === 'string' ? kv.indexOf('=') : -1;
    if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return {
    user: c.User || undefined,
    env,
    workdir: c.WorkingDir || undefined,
    entrypoint: c.Entrypoint?.length ? c.Entrypoint : undefined,
    cmd: c.Cmd?.length ? c.Cmd : undefined,
    limits: {},
  };
}

/**
 * What a runbox VPS needs in any rootfs: mount points /proc /sys /dev and /.runbox (the agent's
 * bind mount), /tmp with 1777, and an /etc/passwd. Never writes through a symlink of the image:
 * a mount point or /tmp that is not a real directory is replaced by one.
 */
async function prepareRootfs(rootfs: string): Promise<void> {
  const top = await fs.lstat(rootfs);
  if (!top.isDirectory()) throw new RunboxError('internal', `umoci made no rootfs directory at ${rootfs}`);
  const etc = path.join(rootfs, 'etc');
  const etcSt = await fs.lstat(etc).catch(() => null);
  if (etcSt && !etcSt.isDirectory()) throw bad('the image\'s /etc is not a directory');
  const dirs: Array<[string, number]> = [['proc', 0o555], ['sys', 0o555], ['dev', 0o755], ['.runbox', 0o755], ['tmp', 0o1777], ['etc', 0o755]];
  for (const [rel, mode] of dirs) {
    const p = path.join(rootfs, rel);
    const s = await fs.lstat(p).catch(() => null);
    if (s?.isDirectory()) {
      if (rel === 'tmp') await fs.chmod(p, mode);
      continue;
    }
    if (s) await fs.rm(p, { recursive: true, force: true });
    await fs.mkdir(p);
    await fs.chmod(p, mode);
  }
  // 'wx' is O_CREAT|O_EXCL: fails on anything there, a dangling symlink included.
  if (!(await lexists(path.join(etc, 'passwd')))) {
    await fs.writeFile(path.join(etc, 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n', { flag: 'wx', mode: 0o644 });
  }
  if (!(await lexists(path.join(etc, 'group')))) {
    await fs.writeFile(path.join(etc, 'group'), 'root:x:0:\nnogroup:x:65534:\n', { flag: 'wx', mode: 0o644 });
  }
}

// ---- a minimal tar reader: member names, types, sizes and data offsets (ustar, GNU, PAX) --------

export interface TarMember {
  /** '0' regular file, '5' directory, '2' symlink, '1' hard link, ... */
  type: string;
  offset: number;
  size: number;
  linkname: string;
}

/** Indexes an uncompressed tar by normalized member name (a later member wins, as when extracting). */
export async function readTarIndex(file: string, label = file): Promise<Map<string, TarMember>> {
  const fh = await fs.open(file, 'r');
  try {
    const total = (await fh.stat()).size;
    const out = new Map<string, TarMember>();
    const hdr = Buffer.alloc(512);
    let pos = 0;
    let pax: Record<string, string> = {};
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      if (pos + 512 > total) throw bad(`${label}: corrupted or truncated tarball (ends at byte ${total} without an end-of-archive marker)`);
      await readAt(fh, hdr, pos);
      if (hdr.every((b) => b === 0)) break;
      if (!checksumOk(hdr)) throw bad(`${label}: corrupted tarball or not a tar archive (bad header checksum at byte ${pos})`);
      const type = hdr[156] === 0 ? '0' : String.fromCharCode(hdr[156]!);
      // Like Go's archive/tar: link, device, directory and fifo members carry no data.
      const size = '123456'.includes(type) ? 0 : Number(pax.size ?? tarNumber(hdr.subarray(124, 136)));
      const data = pos + 512;
      if (!Number.isSafeInteger(size) || size < 0 || data + size > total) {
        throw bad(`${label}: corrupted or truncated tarball (member at byte ${pos} claims ${size} bytes)`);
      }
      pos = data + Math.ceil(size / 512) * 512;
      if (type === 'x' || type === 'L' || type === 'K') {
        if (size > 1 << 20) throw bad(`${label}: corrupted tarball (extended header of ${size} bytes)`);
        const body = Buffer.alloc(size);
        await readAt(fh, body, data);
        if (type === 'x') pax = parsePax(body);
        else if (type === 'L') longName = cstr(body, 0, size);
        else longLink = cstr(body, 0, size);
        continue;
      }
      if (type === 'g') continue;
      let name = cstr(hdr, 0, 100);
      if (hdr.toString('latin1', 257, 263) === 'ustar\0') {
        const prefix = cstr(hdr, 345, 155);
        if (prefix) name = `${prefix}/${name}`;
      }
      name = pax.path ?? longName ?? name;
      const linkname = pax.linkpath ?? longLink ?? cstr(hdr, 157, 100);
      pax = {};
      longName = longLink = undefined;
      const norm = name.replace(/^(\.\/)+/, '').replace(/\/+$/, '');
      if (norm) out.set(norm, { type: type === '7' ? '0' : type, offset: data, size, linkname });
    }
    return out;
  } finally {
    await fh.close();
  }
}

async function readAt(fh: fs.FileHandle, buf: Buffer, pos: number): Promise<void> {
  const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
  if (bytesRead !== buf.length) throw bad('corrupted or truncated tarball');
}

function checksumOk(h: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
  const stored = parseInt(cstr(h, 148, 8).trim() || 'x', 8);
  return stored === sum;
}

/** Octal, or GNU base-256 when the first byte has its high bit set. */
function tarNumber(b: Buffer): number {
  if (b[0]! & 0x80) {
    let n = b[0]! & 0x7f;
    for (let i = 1; i < b.length; i++) n = n * 256 + b[i]!;
    return n;
  }
  const s = cstr(b, 0, b.length).trim();
  return s === '' ? 0 : /^[0-7]+$/.test(s) ? parseInt(s, 8) : NaN;
}

function parsePax(body: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < body.length) {
    const sp = body.indexOf(0x20, i);
    const len = sp < 0 ? NaN : parseInt(body.toString('latin1', i, sp), 10);
    if (!(len > 0) || i + len > body.length) break;
    const rec = body.toString('utf8', sp + 1, i + len - 1);
    const eq = rec.indexOf('=');
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    i += len;
  }
  return out;
}

function cstr(b: Buffer, start: number, len: number): string {
  const end = b.indexOf(0, start);
  return b.toString('utf8', start, end < 0 || end > start + len ? start + len : end);
}

async function readMember(tar: string, m: TarMember, max: number): Promise<Buffer> {
  if (m.size > max) throw bad(`${path.basename(tar)}: member too big (${m.size} bytes)`);
  const fh = await fs.open(tar, 'r');
  try {
    const buf = Buffer.alloc(m.size);
    await readAt(fh, buf, m.offset);
    return buf;
  } finally {
    await fh.close();
  }
}

async function copyMember(tar: string, m: TarMember, dest: string): Promise<void> {
  await fs.rm(dest, { force: true }); // a later member of the same name wins
  if (m.size === 0) return fs.writeFile(dest, '', { flag: 'wx', mode: 0o644 });
  await pipeline(createReadStream(tar, { start: m.offset, end: m.offset + m.size - 1 }), createWriteStream(dest, { flags: 'wx', mode: 0o644 }));
}

// ---- small helpers -------------------------------------------------------------------------------

async function tool(argv: string[], cwd: string, o: OciImportOptions, what: string): Promise<void> {
  o.log?.debug({ argv, cwd }, 'oci import: running');
  let r;
  try {
    r = await exec(argv, { cwd, timeoutMs: o.timeoutMs ?? 30 * 60_000 });
  } catch (e) {
    const hint = isRunboxError(e) && /ENOENT/.test(e.message) ? ` (install it: apt-get install ${path.basename(argv[0]!)}, or run scripts/setup.sh)` : '';
    throw new RunboxError('unavailable', `${errorMessage(e)}${hint}`, { cause: e });
  }
  if (r.code !== 0) {
    const detail = (r.stderr || r.stdout)
      .trim()
      .split('\n')
      .slice(-3)
      .map((l) => l.replace(/^.*level=fatal msg="(.*)"$/, '$1').replace(/^\s*⨯\s*/, '').trim())
      .join(' | ');
    throw bad(`${what}: ${detail || `${path.basename(argv[0]!)} exited with ${r.code ?? r.signal}`}`);
  }
}

async function setCurrent(tplDir: string, hash: string): Promise<void> {
  const me = selfRef();
  const tmp = path.join(tplDir, `.current-${me.pid}-${me.start}-${crypto.randomBytes(4).toString('hex')}`);
  await fs.symlink(hash, tmp);
  try {
    await fs.rename(tmp, path.join(tplDir, 'current'));
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

async function readInfo(dir: string): Promise<TemplateInfo | null> {
  const raw = await fs.readFile(path.join(dir, 'template.json'), 'utf8').catch(() => null);
  if (raw === null) return null;
  try {
    const parsed = TemplateInfoSchema.safeParse(JSON.parse(raw));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

/** Work dirs (and symlinks being swapped in) of imports whose process is gone (killed mid-import). */
async function removeStaleWork(tplDir: string, log?: Logger): Promise<void> {
  for (const n of await fs.readdir(tplDir).catch(() => [] as string[])) {
    const m = /^\.(?:import|current)-(\d+)-(\d+)-/.exec(n);
    if (!m || isAlive({ pid: Number(m[1]), start: Number(m[2]) })) continue;
    log?.info({ dir: n }, 'removing what a killed import left');
    await fs.rm(path.join(tplDir, n), { recursive: true, force: true });
  }
}

async function duBytes(dir: string): Promise<number> {
  const r = await exec(['du', '-sb', dir]);
  const n = Number(r.stdout.split('\t')[0]);
  return Number.isFinite(n) ? n : 0;
}

async function isGzip(file: string): Promise<boolean> {
  const fh = await fs.open(file, 'r');
  try {
    const b = Buffer.alloc(2);
    const { bytesRead } = await fh.read(b, 0, 2, 0);
    return bytesRead === 2 && b[0] === 0x1f && b[1] === 0x8b;
  } finally {
    await fh.close();
  }
}

async function readJsonFile(file: string, label: string): Promise<unknown> {
  const st = await fs.stat(file).catch(() => null);
  if (!st?.isFile()) throw bad(`${label} is missing`);
  if (st.size > 4 << 20) throw bad(`${label} is too big`);
  return parseJson(await fs.readFile(file), label);
}

function parseJson(data: Buffer, label: string): unknown {
  try {
    const v: unknown = JSON.parse(data.toString('utf8'));
    if (typeof v !== 'object' || v === null) throw new Error('not a JSON object');
    return v;
  } catch (e) {
    throw bad(`${label} is malformed: ${errorMessage(e)}`, e);
  }
}

const exists = (p: string) => fs.stat(p).then(() => true, () => false);
const lexists = (p: string) => fs.lstat(p).then(() => true, () => false);
const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
