import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';

/**
 * Builds container images by hand, no registry and no network: an OCI image layout (oci-layout,
 * index.json, blobs/sha256/*) from layers given as directories (tarred with `tar -C dir -cf - .`)
 * or as raw tar members (for entries tar would never write: ../x, /x, writes through symlinks),
 * and the same image as a `docker save` tarball.
 */
const execFileP = promisify(execFile);

/** A raw tar member (ustar; names up to 100 bytes). */
export interface RawEntry {
  name: string;
  type?: 'file' | 'dir' | 'symlink' | 'hardlink';
  data?: string | Buffer;
  linkname?: string;
  mode?: number;
}

export type LayerSpec = { dir: string } | { entries: RawEntry[] };

export interface ImageConfigSpec {
  User?: string;
  Env?: string[];
  WorkingDir?: string;
  Entrypoint?: string[];
  Cmd?: string[];
}

export interface BuiltImage {
  /** The OCI image layout directory. */
  layout: string;
  manifestDigest: string;
  configDigest: string;
  /** Per layer: uncompressed tar (what docker save carries), its digest (diff_id), gzip digest. */
  layers: Array<{ tar: Buffer; diffId: string; digest: string }>;
  config: Buffer;
}

const sha256 = (b: Buffer) => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`;

async function writeBlob(layout: string, data: Buffer): Promise<string> {
  const digest = sha256(data);
  await fs.mkdir(path.join(layout, 'blobs', 'sha256'), { recursive: true });
  await fs.writeFile(path.join(layout, 'blobs', 'sha256', digest.slice(7)), data);
  return digest;
}

export async function tarDir(dir: string): Promise<Buffer> {
  const { stdout } = await execFileP('tar', ['-C', dir, '--numeric-owner', '-cf', '-', '.'], { encoding: 'buffer', maxBuffer: 512 << 20 });
  return stdout;
}

/** A tar stream of raw members, in order, with the end-of-archive marker. */
export function tarEntries(entries: RawEntry[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const data = e.type === undefined || e.type === 'file' ? Buffer.from(e.data ?? '') : Buffer.alloc(0);
    const h = Buffer.alloc(512);
    if (Buffer.byteLength(e.name) > 100) throw new Error(`tar name too long: ${e.name}`);
    h.write(e.name, 0, 100, 'utf8');
    const type = e.type ?? 'file';
    const mode = e.mode ?? (type === 'dir' ? 0o755 : type === 'symlink' ? 0o777 : 0o644);
    h.write(`${mode.toString(8).padStart(7, '0')}\0`, 100, 'latin1');
    h.write('0000000\0', 108, 'latin1'); // uid
    h.write('0000000\0', 116, 'latin1'); // gid
    h.write(`${data.length.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
    h.write(`${Math.floor(Date.now() / 1000).toString(8).padStart(11, '0')}\0`, 136, 'latin1');
    h.write({ file: '0', hardlink: '1', symlink: '2', dir: '5' }[type], 156, 'latin1');
    if (e.linkname) h.write(e.linkname, 157, 100, 'utf8');
    h.write('ustar\x0000', 257, 'latin1');
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    blocks.push(h, data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

/** Writes an OCI image layout into `layout` (created) and returns what it wrote. */
export async function buildOciImage(
  layout: string,
  spec: { layers: LayerSpec[]; config?: ImageConfigSpec; architecture?: string; os?: string; refName?: string },
): Promise<BuiltImage> {
  await fs.mkdir(layout, { recursive: true });
  const layers: BuiltImage['layers'] = [];
  for (const l of spec.layers) {
    const tar = 'dir' in l ? await tarDir(l.dir) : tarEntries(l.entries);
    const digest = await writeBlob(layout, zlib.gzipSync(tar));
    layers.push({ tar, diffId: sha256(tar), digest });
  }
  const config = Buffer.from(
    JSON.stringify({
      created: '2026-01-01T00:00:00Z',
      architecture: spec.architecture ?? 'amd64',
      os: spec.os ?? 'linux',
      config: spec.config ?? {},
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: layers.map(() => ({ created_by: 'test/helpers/oci-image.ts' })),
    }),
  );
  const configDigest = await writeBlob(layout, config);
  const gz = await Promise.all(layers.map(async (l) => (await fs.stat(path.join(layout, 'blobs', 'sha256', l.digest.slice(7)))).size));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: layers.map((l, i) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: gz[i] })),
    }),
  );
  const manifestDigest = await writeBlob(layout, manifest);
  await fs.writeFile(
    path.join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: manifestDigest,
          size: manifest.length,
          annotations: { 'org.opencontainers.image.ref.name': spec.refName ?? 'latest' },
        },
      ],
    }),
  );
  await fs.writeFile(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  return { layout, manifestDigest, configDigest, layers, config };
}

/**
 * Wraps the layout's image into a multi-platform image index (index.json → index blob → the
 * manifest, declared for `platform`), as registries and buildx make them.
 */
export async function wrapInIndex(img: BuiltImage, platform: { os: string; architecture: string }): Promise<void> {
  const manifestSize = (await fs.stat(path.join(img.layout, 'blobs', 'sha256', img.manifestDigest.slice(7)))).size;
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: img.manifestDigest, size: manifestSize, platform }],
    }),
  );
  const digest = await writeBlob(img.layout, index);
  await fs.writeFile(
    path.join(img.layout, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', digest, size: index.length }] }),
  );
}

/**
 * The image as `docker save` writes it (the docker-archive format): top-level manifest.json
 * [{Config, RepoTags, Layers}], the config JSON, one uncompressed <id>/layer.tar per layer.
 */
export async function writeDockerSave(img: BuiltImage, out: string, repoTag = 'runbox-test/img:latest'): Promise<void> {
  const stage = await fs.mkdtemp(`${out}.stage-`);
  try {
    const configName = `${img.configDigest.slice(7)}.json`;
    await fs.writeFile(path.join(stage, configName), img.config);
    const layerNames: string[] = [];
    for (const l of img.layers) {
      const id = l.diffId.slice(7);
      await fs.mkdir(path.join(stage, id));
      await fs.writeFile(path.join(stage, id, 'layer.tar'), l.tar);
      await fs.writeFile(path.join(stage, id, 'VERSION'), '1.0');
      layerNames.push(`${id}/layer.tar`);
    }
    await fs.writeFile(path.join(stage, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: [repoTag], Layers: layerNames }]));
    await fs.writeFile(path.join(stage, 'repositories'), JSON.stringify({}));
    await execFileP('tar', ['-C', stage, '--numeric-owner', '-cf', out, '.']);
  } finally {
    await fs.rm(stage, { recursive: true, force: true });
  }
}

/** The layout as one tar (an "oci-archive"), with extra raw members put before the layout's own. */
export async function writeOciArchive(img: BuiltImage, out: string, extra: RawEntry[] = []): Promise<void> {
  const entries: RawEntry[] = [
    { name: 'oci-layout', data: await fs.readFile(path.join(img.layout, 'oci-layout')) },
    { name: 'index.json', data: await fs.readFile(path.join(img.layout, 'index.json')) },
    { name: 'blobs/', type: 'dir' },
    { name: 'blobs/sha256/', type: 'dir' },
  ];
  for (const b of await fs.readdir(path.join(img.layout, 'blobs', 'sha256'))) {
    entries.push({ name: `blobs/sha256/${b}`, data: await fs.readFile(path.join(img.layout, 'blobs', 'sha256', b)) });
  }
  await fs.writeFile(out, tarEntries([...extra, ...entries]));
}
