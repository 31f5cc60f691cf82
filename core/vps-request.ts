import { z } from 'zod';

/** Field rules shared by `runbox run` and the HTTP API. */
export const HostnameSchema = z
  .string()
  .max(63)
  .regex(/^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*$/, 'a valid hostname (letters, digits, - and .)');

export const EnvNameSchema = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name ([A-Za-z_][A-Za-z0-9_]*)');

export const UserSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$/, 'a user name or uid, optionally :group or :gid');

export const WorkdirSchema = z.string().startsWith('/', 'an absolute path').max(4096);

export const NetworkModeSchema = z.enum(['none', 'private', 'egress']);

export const TemplateNameSchema = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'a template name');
