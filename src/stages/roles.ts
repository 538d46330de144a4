import { denial, type Denial } from '../core/errors.js';
import type { Principal } from '../core/types.js';

/**
 * Role inheritance, resolved once at config load: `admin: [sandbox:manage]`
 * means whoever holds admin also holds sandbox:manage (and, transitively,
 * whatever that includes). Cycles are allowed and simply merge the roles.
 */
export interface RoleResolver {
  /** The closure of the given roles. */
  expand(roles: readonly string[]): ReadonlySet<string>;
}

export function createRoleResolver(graph: Readonly<Record<string, readonly string[]>>): RoleResolver {
  const closure = new Map<string, ReadonlySet<string>>();
  for (const role of Object.keys(graph)) {
    const seen = new Set<string>([role]);
    const stack = [role];
    while (stack.length > 0) {
      const r = stack.pop() as string;
      for (const child of graph[r] ?? []) {
        if (!seen.has(child)) {
          seen.add(child);
          stack.push(child);
        }
      }
    }
    closure.set(role, seen);
  }
  return {
    expand(roles) {
      const out = new Set<string>();
      for (const r of roles) {
        const c = closure.get(r);
        if (c) for (const x of c) out.add(x);
        else out.add(r);
      }
      return out;
    },
  };
}

/** A Set that refuses changes once built: it is shared between principals, so no one may alter it for the others. */
class FrozenSet<T> extends Set<T> {
  #frozen = false;

  constructor(values: Iterable<T>) {
    super();
    for (const v of values) super.add(v);
    this.#frozen = true;
  }

  override add(value: T): this {
    if (this.#frozen) throw new TypeError('a principal\'s role set is read-only');
    return super.add(value);
  }

  override delete(value: T): boolean {
    if (this.#frozen) throw new TypeError('a principal\'s role set is read-only');
    return super.delete(value);
  }

  override clear(): void {
    if (this.#frozen) throw new TypeError('a principal\'s role set is read-only');
    super.clear();
  }
}

/** What a principal holds: the roles found in its token and their closure. Both read-only (frozen). */
export interface HeldRoles {
  roles: readonly string[];
  effectiveRoles: ReadonlySet<string>;
}

/**
 * One HeldRoles per distinct list of token roles, shared by every principal
 * with that list. Tokens of a realm carry a handful of role lists, and each
 * cached principal otherwise kept its own array and Set (about 400 of the
 * 1,200 bytes a token-cache entry holds). Bounded: once `max` lists are known,
 * others get a fresh (equally frozen) HeldRoles each time. One per verifier
 * (no module state).
 */
export interface RoleInterner {
  /** `roles` (order kept) and `resolver.expand(roles)`, frozen and shared. */
  hold(roles: readonly string[]): HeldRoles;
}

export function createRoleInterner(resolver: RoleResolver, max = 256): RoleInterner {
  const byList = new Map<string, HeldRoles>();
  // The list found last: consecutive tokens mostly carry the same roles, and
  // comparing a few names is cheaper than joining them into a key and hashing it.
  let last: HeldRoles | undefined;
  return {
    hold(roles) {
      if (last !== undefined && sameList(last.roles, roles)) return last;
      // The key is for lookup only: role names may contain the separator, so a hit must also match element by element.
      const key = roles.join('\n');
      const known = byList.get(key);
      if (known !== undefined && sameList(known.roles, roles)) {
        last = known;
        return known;
      }
      const held: HeldRoles = { roles: Object.freeze([...roles]), effectiveRoles: new FrozenSet(resolver.expand(roles)) };
      if (known === undefined && byList.size < max) byList.set(key, held);
      return held;
    },
  };
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Reads role names from the claim paths an issuer is configured with. */
export function extractRoles(claims: Readonly<Record<string, unknown>>, paths: readonly (readonly string[])[]): string[] {
  const out: string[] = [];
  for (const path of paths) {
    let v: unknown = claims;
    for (const seg of path) {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) {
        v = undefined;
        break;
      }
      v = (v as Record<string, unknown>)[seg];
    }
    if (Array.isArray(v)) {
      for (const r of v) if (typeof r === 'string' && r.length > 0 && !out.includes(r)) out.push(r);
    } else if (typeof v === 'string') {
      // Space-delimited, as OAuth `scope` is.
      for (const r of v.split(' ')) if (r.length > 0 && !out.includes(r)) out.push(r);
    }
  }
  return out;
}

export interface RoleRequirement {
  mode: 'anyOf' | 'allOf';
  roles: readonly string[];
}

export function checkRoles(principal: Principal, req: RoleRequirement): Denial | undefined {
  const have = principal.effectiveRoles;
  if (req.mode === 'anyOf') {
    for (const r of req.roles) if (have.has(r)) return undefined;
    return denial('missing_role', `requires any of the roles: ${req.roles.join(', ')}`);
  }
  const missing = req.roles.filter((r) => !have.has(r));
  return missing.length === 0 ? undefined : denial('missing_role', `requires all of the roles: ${req.roles.join(', ')}`);
}
