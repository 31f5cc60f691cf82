import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTokens, TokenAuth } from '../../api/auth.js';
import { parseEnv, REPO_ROOT } from '../../core/config.js';
import type { Job } from '../../core/job.js';
import { waitFor } from '../helpers/net.js';
import { startStack, STACK_TOKENS, type Stack } from '../helpers/stack.js';

/**
 * Authorization, played by a tenant against a real API (listening, real Redis, one real worker
 * host running real VPSs): admin rights come with a token's role, never with a tenant's name.
 * Tenants: a (user), "default" (user: the name that used to make a tenant admin), ops (admin),
 * plus a metrics-only token for a Prometheus scraper.
 */
const DEFAULT_TOKEN = 'token-of-a-tenant-merely-named-default';
const METRICS = 'scraper-token-0123456789abcdef';
const TOKEN = { a: STACK_TOKENS.a, default: DEFAULT_TOKEN, admin: STACK_TOKENS.admin, metrics: METRICS } as const;
type Who = keyof typeof TOKEN;

let st: Stack;
beforeAll(async () => {
  st = await startStack({
    apiTokens: `a=${STACK_TOKENS.a},default=${DEFAULT_TOKEN},ops:admin=${STACK_TOKENS.admin}`,
    metricsToken: METRICS,
  });
  await waitFor(async () => (await hostsAs('admin')).length === 1, 'the worker host to heartbeat', 10_000);
});
afterAll(async () => {
  await st?.stop();
});

const req = (path: string, who: Who | null, init: RequestInit = {}) =>
  fetch(st.url + path, {
    ...init,
    headers: { 'content-type': 'application/json', ...(who ? { authorization: `Bearer ${TOKEN[who]}` } : {}), ...(init.headers ?? {}) },
  });
const post = (path: string, who: Who, body?: unknown) => req(path, who, { method: 'POST', body: body === undefined ? undefined : JSON.stringify(body) });

async function expectForbidden(res: Response, detail: RegExp): Promise<void> {
  expect(res.status).toBe(403);
  expect(res.headers.get('content-type')).toBe('application/problem+json');
  expect(await res.json()).toMatchObject({ status: 403, code: 'forbidden', type: 'https://runbox.dev/problems/forbidden', detail: expect.stringMatching(detail) });
}

const hostsAs = async (who: Who) => ((await (await req('/v1/hosts', who)).json()) as { hosts: Array<Record<string, unknown>> }).hosts;

describe('tokens with roles', () => {
  it('parse: tenant:admin=token is an admin, tenant=token and tenant:user=token are not, whatever the name', () => {
    const auth = new TokenAuth(parseTokens('ops:admin=t1,default=t2,ci:user=t3', 'RUNBOX_API_TOKENS'));
    expect(auth.authenticate('t1')).toEqual({ tenant: 'ops', admin: true });
    expect(auth.authenticate('t2')).toEqual({ tenant: 'default', admin: false });
    expect(auth.authenticate('t3')).toEqual({ tenant: 'ci', admin: false });
    expect(auth.admins).toBe(1);
  });

  it('RUNBOX_ADMIN_TENANTS is gone: a set value stops the start and says what to do instead', () => {
    expect(() => parseEnv({ RUNBOX_ADMIN_TENANTS: 'default' })).toThrow(/RUNBOX_ADMIN_TENANTS: removed: admin is now a role of a token.*tenant:admin=token/);
    expect(() => parseEnv({})).not.toThrow();
  });

  it('RUNBOX_METRICS_TOKEN must be a real secret and no tenant token', () => {
    expect(() => parseEnv({ RUNBOX_METRICS_TOKEN: 'short' })).toThrow(/RUNBOX_METRICS_TOKEN/);
    expect(() => new TokenAuth([{ tenant: 'a', token: METRICS }], { metricsToken: METRICS })).toThrow(/also a tenant's token/);
  });
});

describe('hosts: addresses and operator actions', () => {
  it('a tenant sees hosts without their addresses, ports, instances or other tenants\' job ids', async () => {
    for (const who of ['a', 'default'] as const) {
      const [h] = await hostsAs(who);
      expect(h, who).toMatchObject({ id: st.worker.hostId, draining: false, capacity: expect.any(Number), running: expect.any(Number), templates: expect.any(Array) });
      for (const field of ['address', 'migrationPort', 'instance', 'jobs']) expect(h, `${who}: ${field}`).not.toHaveProperty(field);
    }
  });

  it('an admin token sees where hosts are', async () => {
    const [h] = await hostsAs('admin');
    expect(h).toMatchObject({ id: st.worker.hostId, migrationPort: expect.any(Number), instance: expect.any(String) });
    expect(h).toHaveProperty('address');
  });

  it('a tenant cannot drain or resume a host (403), and the host keeps taking jobs', async () => {
    for (const who of ['default', 'a'] as const) {
      await expectForbidden(await post(`/v1/hosts/${st.worker.hostId}/drain`, who), /draining a host needs a token with the admin role/);
      await expectForbidden(await post(`/v1/hosts/${st.worker.hostId}/resume`, who), /admin role/);
      // Refused before the host is looked up: no probing of host ids either.
      await expectForbidden(await post('/v1/hosts/no-such-host/drain', who), /admin role/);
    }
    expect((await hostsAs('admin'))[0]).toMatchObject({ draining: false });
  });

  it('an admin token drains and resumes a host', async () => {
    const drained = await post(`/v1/hosts/${st.worker.hostId}/drain`, 'admin');
    expect(drained.status).toBe(200);
    expect(await drained.json()).toMatchObject({ host: { draining: true }, moved: [], stayed: [] });
    const resumed = await post(`/v1/hosts/${st.worker.hostId}/resume`, 'admin');
    expect(resumed.status).toBe(200);
    expect(await resumed.json()).toMatchObject({ host: { draining: false } });
  });
});

describe('the CLI (dist/: npm run build first)', () => {
  // Asynchronous: the API answering it runs in this very process.
  const cli = (args: string[], who: Who) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const env: NodeJS.ProcessEnv = { ...process.env, RUNBOX_API_URL: st.url, RUNBOX_TOKEN: TOKEN[who] };
      const c = spawn(path.join(REPO_ROOT, 'bin/runbox'), args, { env, timeout: 30_000 });
      let stdout = '';
      let stderr = '';
      c.stdout.on('data', (d) => (stdout += d));
      c.stderr.on('data', (d) => (stderr += d));
      c.on('close', (code) => resolve({ code, stdout, stderr }));
    });

  it('runbox hosts: a tenant gets the table without addresses, an admin with them', async () => {
    const mine = await cli(['hosts'], 'a');
    expect(mine.code).toBe(0);
    expect(mine.stdout.split('\n')[0]).toMatch(/^HOST\s+JOBS\s+STATE\s+POOLS/);
    expect(mine.stdout).toContain(st.worker.hostId);
    const admin = await cli(['hosts'], 'admin');
    expect(admin.code).toBe(0);
    expect(admin.stdout.split('\n')[0]).toMatch(/^HOST\s+ADDRESS\s+JOBS\s+STATE\s+POOLS/);
  });

  it('runbox drain with a user token: a clear message and exit 2', async () => {
    const r = await cli(['drain', st.worker.hostId], 'default');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/draining a host needs a token with the admin role .*\(HTTP 403, forbidden\)/);
  });
});

describe('migration targets', () => {
  it('a tenant cannot pick the host its job moves to (403, the job stays put); an admin passes that check', async () => {
    const started: Job[] = [];
    try {
      for (const who of ['a', 'default', 'admin'] as const) {
        const res = await post('/v1/jobs', who, { command: ['sleep', '60'] });
        expect(res.status).toBe(201);
        started.push((await res.json()) as Job);
      }
      const [ja, jd, jo] = started as [Job, Job, Job];
      const running = async (who: Who, id: string) => ((await (await req(`/v1/jobs/${id}`, who)).json()) as Job).status === 'running';
      await waitFor(async () => (await running('a', ja.id)) && (await running('default', jd.id)) && (await running('admin', jo.id)), 'the three jobs to run', 60_000);

      for (const [who, job] of [['default', jd], ['a', ja]] as const) {
        await expectForbidden(await post(`/v1/jobs/${job.id}/migrate`, who, { host: st.worker.hostId }), /choosing the target host of a migration needs a token with the admin role/);
        const after = (await (await req(`/v1/jobs/${job.id}`, who)).json()) as Job;
        expect(after).toMatchObject({ status: 'running', host: st.worker.hostId, migrations: [] });
      }
      // Past the role check, the admin's request meets the ordinary validation of the target.
      const res = await post(`/v1/jobs/${jo.id}/migrate`, 'admin', { host: 'no-such-host' });
      expect(res.status).toBe(400);
      expect(await res.json()).toMatchObject({ code: 'invalid_argument', detail: 'host no-such-host is not a live host' });
    } finally {
      for (const [i, who] of (['a', 'default', 'admin'] as const).entries()) {
        if (started[i]) await post(`/v1/jobs/${started[i]!.id}/cancel`, who);
      }
    }
  });
});

describe('/metrics', () => {
  it('needs the metrics token or an admin token', async () => {
    const none = await req('/metrics', null);
    expect(none.status).toBe(401);
    expect(await none.json()).toMatchObject({ code: 'unauthorized' });
    for (const who of ['a', 'default'] as const) await expectForbidden(await req('/metrics', who), /RUNBOX_METRICS_TOKEN or a token with the admin role/);
    for (const who of ['metrics', 'admin'] as const) {
      const res = await req('/metrics', who);
      expect(res.status, who).toBe(200);
      expect(await res.text()).toMatch(/^runbox_hosts 1$/m);
    }
  });

  it('the metrics token opens nothing else', async () => {
    for (const path of ['/v1/jobs', '/v1/hosts', '/v1/templates']) {
      await expectForbidden(await req(path, 'metrics'), /may only read \/metrics/);
    }
  });
});
