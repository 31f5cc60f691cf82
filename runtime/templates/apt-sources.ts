import fs from 'node:fs/promises';
import path from 'node:path';
import { RunboxError } from '../../core/errors.js';
import { exec } from '../exec.js';

/**
 * The Debian mirror of a template is the one the building host is configured with, read from its
 * apt sources at build time (deb822 `*.sources` and one-line `*.list`), never a host name written
 * into the repository. The same scheme as scripts/install-criu.sh.
 */
export interface AptSource {
  uri: string;
  suites: string[];
  components: string[];
  /** Keyring file (absent: apt's trusted.gpg.d; an inline key is dropped). */
  signedBy?: string;
}

/** Parses deb822 stanzas (Types/URIs/Suites/Components/Signed-By/Enabled); only `deb` entries. */
export function parseDeb822(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const stanza of text.split(/\n[ \t]*\n/)) {
    const f: Record<string, string> = {};
    let key = '';
    for (const line of stanza.split('\n')) {
      if (line.startsWith('#')) continue;
      if (/^[ \t]/.test(line)) {
        if (key) f[key] += `\n${line.trim()}`; // continuation (e.g. an inline key)
        continue;
      }
      const m = /^([A-Za-z][A-Za-z0-9-]*):\s*(.*)$/.exec(line);
      if (!m) continue;
      key = m[1]!.toLowerCase();
      f[key] = m[2]!.trim();
    }
    const words = (k: string) => (f[k] ?? '').split(/\s+/).filter(Boolean);
    if (!words('types').includes('deb') || (f.enabled ?? 'yes').toLowerCase() === 'no') continue;
    const signed = f['signed-by'];
    for (const uri of words('uris')) {
      out.push({ uri, suites: words('suites'), components: words('components'), signedBy: signed && !signed.includes('\n') ? signed : undefined });
    }
  }
  return out.filter((s) => s.suites.length > 0);
}

/** Parses one-line `deb [opts] URI SUITE COMPONENTS...` entries. */
export function parseOneLine(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trim();
    const m = /^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
    if (!m) continue;
    const opts = Object.fromEntries((m[1] ?? '').split(/\s+/).filter(Boolean).map((o) => o.split('=', 2) as [string, string]));
    out.push({ uri: m[2]!, suites: [m[3]!], components: (m[4] ?? '').split(/\s+/).filter(Boolean), signedBy: opts['signed-by'] });
  }
  return out;
}

/** Every `deb` source the host's apt is configured with, in apt's reading order. */
export async function readHostSources(etcApt = '/etc/apt'): Promise<AptSource[]> {
  const out: AptSource[] = [];
  out.push(...parseOneLine(await fs.readFile(path.join(etcApt, 'sources.list'), 'utf8').catch(() => '')));
  const dir = path.join(etcApt, 'sources.list.d');
  for (const f of (await fs.readdir(dir).catch(() => [] as string[])).sort()) {
    const text = await fs.readFile(path.join(dir, f), 'utf8').catch(() => '');
    if (f.endsWith('.list')) out.push(...parseOneLine(text));
    else if (f.endsWith('.sources')) out.push(...parseDeb822(text));
  }
  return out;
}

/**
 * The sources a template of `suite` gets: the host's entries for that suite and its -updates and
 * -security companions. When the host runs another release (`hostSuite`), its entries are mapped
 * onto `suite` (same mirrors, other suite names).
 */
export function templateSources(host: AptSource[], suite: string, hostSuite?: string): AptSource[] {
  const pick = (want: string) =>
    host
      .map((s) => ({ ...s, suites: s.suites.filter((x) => x === want || /^[a-z]+-(updates|security)$/.test(x) && x.startsWith(`${want}-`)) }))
      .filter((s) => s.suites.length > 0)
      .map((s) => ({ ...s, suites: s.suites.map((x) => suite + x.slice(want.length)) }));
  let out = pick(suite);
  if (!out.some((s) => s.suites.includes(suite)) && hostSuite && hostSuite !== suite) out = pick(hostSuite);
  if (!out.some((s) => s.suites.includes(suite))) {
    throw new RunboxError(
      'unavailable',
      `no Debian mirror for "${suite}" in the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/); add one, e.g. a deb822 entry with "Suites: ${suite}"`,
    );
  }
  return out;
}

/** The mirror debootstrap downloads from: the first source that carries the suite itself. */
export function primaryMirror(sources: AptSource[], suite: string): AptSource {
  const s = sources.find((x) => x.suites.includes(suite));
  if (!s) throw new RunboxError('unavailable', `no Debian mirror for "${suite}"`);
  return s;
}

/** deb822 text written to /etc/apt/sources.list.d/debian.sources inside the template. */
export function renderSources(sources: AptSource[], keyring: string): string {
  const stanzas = sources.map((s) =>
    [`Types: deb`, `URIs: ${s.uri}`, `Suites: ${s.suites.join(' ')}`, `Components: ${s.components.join(' ') || 'main'}`, `Signed-By: ${keyring}`].join('\n'),
  );
  return `# Written by runbox when this template was built: the Debian mirror configured on the building host.\n${stanzas.join('\n\n')}\n`;
}

/**
 * Host apt settings a template needs to reach the same mirror: proxies, and the Valid-Until/Date
 * checks (a snapshot mirror's Release files are past their Valid-Until date; a host that turned
 * the check off for that reason needs it off inside the template too).
 */
export async function hostAptConf(): Promise<string> {
  const r = await exec(['apt-config', 'dump'], { timeoutMs: 10_000 }).catch(() => undefined);
  if (!r || r.code !== 0) return '';
  return filterAptConf(r.stdout);
}

export function filterAptConf(dump: string): string {
  const keep = dump
    .split('\n')
    .filter((l) => /^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy(::[^ ]+)?) /.test(l))
    .sort();
  return keep.length ? `// Written by runbox when this template was built: from the building host's apt configuration.\n${keep.join('\n')}\n` : '';
}

/** VERSION_CODENAME of the host, from /etc/os-release. */
export async function hostCodename(): Promise<string | undefined> {
  const text = await fs.readFile('/etc/os-release', 'utf8').catch(() => '');
  return /^VERSION_CODENAME=["']?([a-z]+)/m.exec(text)?.[1];
}
