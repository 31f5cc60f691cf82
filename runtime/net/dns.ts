import fs from 'node:fs/promises';

/**
 * resolv.conf for VPSs that may reach the outside (egress): the host's own nameservers, except
 * loopback ones (a 127.0.0.53 stub on the host is not reachable from a VPS), with systemd-resolved's
 * upstream list as the fallback. Pure parsing below; `hostResolvConf` reads the files.
 */
export function vpsResolvConf(...texts: string[]): string | undefined {
  for (const text of texts) {
    const lines = text.split('\n').map((l) => l.trim());
    const servers = lines.filter((l) => /^nameserver\s+/.test(l) && !/^nameserver\s+(127\.|::1\b|0\.0\.0\.0)/.test(l));
    if (servers.length === 0) continue;
    const rest = lines.filter((l) => /^(search|domain|options)\s+/.test(l));
    return `# written by runbox from the host's resolver configuration\n${[...servers, ...rest].join('\n')}\n`;
  }
  return undefined;
}

export async function hostResolvConf(): Promise<string | undefined> {
  const read = (f: string) => fs.readFile(f, 'utf8').catch(() => '');
  return vpsResolvConf(await read('/etc/resolv.conf'), await read('/run/systemd/resolve/resolv.conf'));
}

/**
 * The IPv4 nameservers of a resolv.conf text (such as vpsResolvConf's): the firewall keeps port
 * 53 to them open for egress VPSs even when they are private addresses. IPv6 ones are left out
 * (VPSs have no IPv6 path out).
 */
export function nameserversOf(resolv: string | undefined): string[] {
  const out = new Set<string>();
  for (const line of (resolv ?? '').split('\n')) {
    const m = /^\s*nameserver\s+(\d{1,3}(?:\.\d{1,3}){3})\s*$/.exec(line);
    if (m && m[1]!.split('.').every((o) => Number(o) <= 255)) out.add(m[1]!);
  }
  return [...out];
}

/** The nameservers egress VPSs are given (hostResolvConf), IPv4 only. */
export async function hostNameservers(): Promise<string[]> {
  return nameserversOf(await hostResolvConf());
}
