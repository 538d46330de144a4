import type { ConfigIssue } from '../core/errors.js';
import { compilePolicy, type Policy } from '../pipeline/policy.js';
import type { StageFactory } from '../pipeline/stage.js';
import { compileSpiffePatterns } from '../stages/peer.js';
import type { Config } from './schema.js';

export function isLoopbackAddress(address: string): boolean {
  const host = address.slice(0, address.lastIndexOf(':')).replace(/^\[|\]$/g, '');
  // Only literal loopback addresses: a host name such as 127.attacker.example can resolve anywhere.
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/**
 * Checks that need more than the schema: cross-references, uniqueness, the
 * route table, templates. Needs no network, so `portcullis validate` runs it too.
 */
export function checkConfig(
  config: Config,
  adminAddress: string = config.listen.admin,
  factories: readonly StageFactory[] = [],
): { ok: true; policy: Policy; issuerNames: Set<string> } | { ok: false; issues: ConfigIssue[] } {
  const issues: ConfigIssue[] = [];
  const names = new Set<string>();
  const urls = new Set<string>();
  config.issuers.forEach((i, idx) => {
    if (names.has(i.name)) issues.push({ path: `issuers[${idx}].name`, message: `duplicate issuer name "${i.name}"` });
    names.add(i.name);
    if (urls.has(i.issuer)) issues.push({ path: `issuers[${idx}].issuer`, message: `issuer URL ${i.issuer} is configured twice` });
    urls.add(i.issuer);
  });
  const dev = config.development.issuer;
  if (dev.enabled) {
    if (!isLoopbackAddress(adminAddress)) {
      issues.push({
        path: 'development.issuer.enabled',
        message: 'the development issuer mints tokens for anyone who reaches the admin port; it needs listen.admin on a loopback address',
      });
    }
    if (names.has(dev.name)) issues.push({ path: 'development.issuer.name', message: `"${dev.name}" is also a configured issuer` });
    names.add(dev.name);
  }
  config.listen.tls?.allowedClients?.forEach((p, i) => {
    const c = compileSpiffePatterns([p]);
    if (!c.ok) issues.push({ path: `listen.tls.allowedClients[${i}]`, message: c.issues[0]?.message ?? 'invalid SPIFFE ID pattern' });
  });
  const compiled = compilePolicy(config, names, factories);
  if (!compiled.ok) issues.push(...compiled.issues);
  if (issues.length > 0 || !compiled.ok) return { ok: false, issues };
  return { ok: true, policy: compiled.policy, issuerNames: names };
}
