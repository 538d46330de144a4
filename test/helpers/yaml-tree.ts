/** Small readers for parsed YAML/JSON trees, shared by the manifest and config tests. */
export type Obj = Record<string, unknown>;

export function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Follows a path of keys / numeric indexes, dotted or as an array (for keys
 * that contain dots); undefined when absent.
 */
export function at(node: unknown, path: string | string[]): unknown {
  let cur: unknown = node;
  for (const key of Array.isArray(path) ? path : path.split('.')) {
    if (Array.isArray(cur) && /^\d+$/.test(key)) cur = cur[Number(key)];
    else if (isObj(cur)) cur = cur[key];
    else return undefined;
  }
  return cur;
}

export function list(node: unknown, path: string): unknown[] {
  const v = at(node, path);
  return Array.isArray(v) ? v : [];
}

/** Every mapping in the tree (depth first). */
export function mappings(node: unknown): Obj[] {
  const out: Obj[] = [];
  const visit = (n: unknown): void => {
    if (Array.isArray(n)) n.forEach(visit);
    else if (isObj(n)) {
      out.push(n);
      Object.values(n).forEach(visit);
    }
  };
  visit(node);
  return out;
}
