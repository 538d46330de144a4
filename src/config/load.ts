import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { ConfigError, PortcullisError, type ConfigIssue } from '../core/errors.js';
import { configSchema, type Config } from './schema.js';

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out ? `.${String(seg)}` : String(seg);
  }
  return out;
}

/** Settings that flags and environment variables override (applied to the parsed document before validation). */
export interface Overrides {
  grpc?: string;
  http?: string;
  admin?: string;
  logLevel?: string;
  keycloakUrl?: string;
  keycloakRealms?: string[];
  keycloakAudiences?: string[];
  mtlsCertFile?: string;
  mtlsKeyFile?: string;
  mtlsCaFile?: string;
  mtlsAllowedClients?: string[];
  /** Sets hops.picod.mode (creating the hop with audience "picod" when absent). */
  picodAuthMode?: string;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function section(doc: Record<string, unknown>, key: string): Record<string, unknown> {
  const cur = doc[key];
  if (isRecord(cur)) return cur;
  const fresh: Record<string, unknown> = {};
  doc[key] = fresh;
  return fresh;
}

export function applyOverrides(raw: unknown, o: Overrides): { doc: unknown; issues: ConfigIssue[] } {
  const issues: ConfigIssue[] = [];
  if (raw !== undefined && raw !== null && !isRecord(raw)) return { doc: raw, issues };
  const doc: Record<string, unknown> = isRecord(raw) ? structuredClone(raw) : {};
  if (o.grpc !== undefined) section(doc, 'listen').grpc = o.grpc;
  if (o.http !== undefined) section(doc, 'listen').http = o.http;
  if (o.admin !== undefined) section(doc, 'listen').admin = o.admin;
  if (o.logLevel !== undefined) section(doc, 'log').level = o.logLevel;
  if (o.mtlsCertFile !== undefined || o.mtlsKeyFile !== undefined || o.mtlsCaFile !== undefined || o.mtlsAllowedClients !== undefined) {
    const listen = section(doc, 'listen');
    const tls = isRecord(listen.tls) ? listen.tls : (listen.tls = {});
    if (o.mtlsCertFile !== undefined) tls.certFile = o.mtlsCertFile;
    if (o.mtlsKeyFile !== undefined) tls.keyFile = o.mtlsKeyFile;
    if (o.mtlsCaFile !== undefined) tls.caFile = o.mtlsCaFile;
    if (o.mtlsAllowedClients !== undefined) tls.allowedClients = o.mtlsAllowedClients;
  }
  if (o.picodAuthMode !== undefined) {
    const hops = section(doc, 'hops');
    const picod = isRecord(hops.picod) ? hops.picod : (hops.picod = { audience: 'picod' });
    picod.mode = o.picodAuthMode;
  }
  const realms = o.keycloakRealms ?? [];
  if (realms.length > 0 || o.keycloakUrl !== undefined) {
    if (!o.keycloakUrl) issues.push({ path: '--keycloak-realm', message: 'needs --keycloak-url' });
    else if (realms.length === 0) issues.push({ path: '--keycloak-url', message: 'needs at least one --keycloak-realm' });
    else if (!o.keycloakAudiences || o.keycloakAudiences.length === 0)
      issues.push({
        path: '--keycloak-realm',
        message: 'needs --keycloak-audience (the audience tokens must carry, e.g. the client id of the service behind Envoy)',
      });
    else {
      const base = o.keycloakUrl.replace(/\/+$/, '');
      const list = Array.isArray(doc.issuers) ? [...(doc.issuers as unknown[])] : [];
      for (const realm of realms) {
        list.push({ name: realm, issuer: `${base}/realms/${realm}`, audiences: o.keycloakAudiences });
      }
      doc.issuers = list;
    }
  }
  return { doc, issues };
}

/**
 * Parses and validates a YAML document. Throws ConfigError listing every problem by path.
 * `check`, when given, runs the cross-reference checks (routes → issuers, route table,
 * templates, stages) on the parsed config and its issues join the list. When the
 * schema rejects some top-level sections, those sections are replaced by their
 * defaults for one more pass, so problems elsewhere (e.g. a route naming an unknown
 * issuer) are still reported in the same run.
 */
export function parseConfig(
  text: string,
  source = 'config',
  overrides: Overrides = {},
  check?: (config: Config) => ConfigIssue[],
): Config {
  const yamlDoc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (yamlDoc.errors.length > 0) {
    // The first few errors locate the problem; the rest are usually its echo.
    throw new ConfigError(
      yamlDoc.errors.slice(0, 3).map((e) => ({
        path: e.linePos ? `line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '',
        message: `YAML: ${(e.message.split('\n')[0] ?? e.message).replace(/ at line \d+, column \d+:?$/, '')}${
          /flow|\{|\}/.test(e.message) ? ' (a value with "{" or "}", such as a path template, must be quoted)' : ''
        }`,
      })),
      source,
    );
  }
  const { doc, issues } = applyOverrides(yamlDoc.toJS(), overrides);
  const parsed = configSchema.safeParse(doc ?? {});
  if (parsed.success) {
    if (check) issues.push(...check(parsed.data));
    if (issues.length > 0) throw new ConfigError(issues, source);
    return parsed.data;
  }
  const schemaIssues = parsed.error.issues.map((i) => ({ path: formatPath(i.path), message: i.message }));
  issues.push(...schemaIssues);
  if (check && isRecord(doc)) {
    const broken = new Set(parsed.error.issues.map((i) => String(i.path[0] ?? '')));
    if (!broken.has('')) {
      const rest: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(doc)) if (!broken.has(k)) rest[k] = v;
      const second = configSchema.safeParse(rest);
      if (second.success) {
        const top = (p: string) => /^[^.[]*/.exec(p)?.[0] ?? p;
        // A reference into a section that was replaced by its defaults would look dangling; leave those out.
        const unreliable = [
          ...(broken.has('issuers') || broken.has('development') ? [/issuer/i] : []),
          ...(broken.has('kubernetes') ? [/resource/i] : []),
          ...(broken.has('hops') || broken.has('hopTokens') ? [/hop/i] : []),
          ...(broken.has('roles') ? [/role/i] : []),
        ];
        for (const i of check(second.data)) {
          if (!broken.has(top(i.path)) && !unreliable.some((re) => re.test(i.message))) issues.push(i);
        }
      }
    }
  }
  throw new ConfigError(issues, source);
}

export function readConfigFile(file: string, overrides: Overrides = {}): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PortcullisError('ERR_CONFIG_READ', `cannot read config file ${file}: ${(err as Error).message}`, { cause: err });
  }
  return parseConfig(text, file, overrides);
}
