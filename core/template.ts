import { z } from 'zod';
import { LimitsSchema } from './limits.js';
import { EnvNameSchema, TemplateNameSchema } from './vps-request.js';

/**
 * Templates: a recipe (templates/<name>/manifest.json + its build files) is built into a read-only
 * rootfs under <templatesDir>/<name>/<hash>/rootfs, described by <hash>/template.json. The hash is
 * the content hash of the recipe (and of its parent template's hash, for derived templates; of the
 * image manifest, for imported ones), so equal hashes mean equal content on every host.
 */
export const ManifestSchema = z
  .object({
    name: TemplateNameSchema,
    description: z.string().min(1).max(500),
    /** Parent template for derived ones (e.g. python: base "debian"); absent for roots. */
    base: TemplateNameSchema.optional(),
    /** How the root is made: "script" runs build.sh OUT; "debootstrap" makes a Debian minbase. */
    builder: z.enum(['script', 'debootstrap', 'apt']).default('script'),
    /** Debian suite (debootstrap) and packages to install (debootstrap --include, or apt-get install for "apt"). */
    suite: z.string().regex(/^[a-z]+$/).optional(),
    packages: z.array(z.string().regex(/^[a-z0-9][a-z0-9+.-]*$/, 'a Debian package name (lowercase letters, digits, + - .)')).default([]),
    /**
     * Host files a "script" build reads, by the environment variable build.sh gets their path in
     * (e.g. {"BUSYBOX": "/bin/busybox"}). Their content is part of the template's hash.
     */
    hostInputs: z.record(EnvNameSchema, z.string().startsWith('/', 'an absolute host path')).default({}),
    defaultUser: z.string().min(1).default('root'),
    defaultLimits: LimitsSchema.default({}),
    env: z.record(z.string(), z.string()).default({}),
    workdir: z.string().startsWith('/').optional(),
    /** A command that must exit 0 in a fresh VPS of the built template. */
    smoke: z.array(z.string()).min(1),
  })
  .strict();
export type Manifest = z.infer<typeof ManifestSchema>;

/** What a built template records (template.json next to its rootfs). */
export const TemplateInfoSchema = z.object({
  name: TemplateNameSchema,
  hash: z.string().regex(/^[a-f0-9]{16,64}$/),
  builtAt: z.string(),
  sizeBytes: z.number().int().nonnegative(),
  source: z.enum(['recipe', 'oci']).default('recipe'),
  base: z.object({ name: z.string(), hash: z.string() }).optional(),
  description: z.string().optional(),
  /** How it was made: the builder and the inputs hashed besides the recipe files (mirror, parent, ...). */
  build: z
    .object({ builder: z.string(), inputs: z.record(z.string(), z.string()).default({}), durationMs: z.number().nonnegative().optional() })
    .optional(),
  /** Job defaults taken from the manifest or the image config. */
  defaults: z
    .object({
      user: z.string().optional(),
      env: z.record(z.string(), z.string()).default({}),
      workdir: z.string().optional(),
      entrypoint: z.array(z.string()).optional(),
      cmd: z.array(z.string()).optional(),
      limits: LimitsSchema.default({}),
    })
    .default({ env: {}, limits: {} }),
});
export type TemplateInfo = z.infer<typeof TemplateInfoSchema>;
