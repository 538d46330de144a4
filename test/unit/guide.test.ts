import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import type { Config, RouteConfig } from '../../src/config/schema.js';
import { compileTemplate } from '../../src/config/template.js';
import { checkConfig } from '../../src/config/validate.js';
import { denial } from '../../src/core/errors.js';
import type { CheckInput, Decision, Principal } from '../../src/core/types.js';
import { validateFile } from '../../src/main.js';
import { createDecider, type DecisionTrace } from '../../src/pipeline/decide.js';
import type { StageContext, StageFactory, StageResult } from '../../src/pipeline/stage.js';
import { createStageModules } from '../../src/stages/registry.js';
import { createRoleResolver } from '../../src/stages/roles.js';
import type { Verifier } from '../../src/stages/verify.js';

/**
 * The user guide (docs/guide/) against the repository:
 *
 * - every command in a ```sh block of the guide appears verbatim (whitespace
 *   normalised) in something that runs it: scripts/guide/*.sh (run by
 *   test/e2e/guide-quickstart.test.ts), scripts/provision/*.sh, a package.json
 *   script, .ci/run, or a test file under test/;
 * - the index links every chapter; every relative link resolves; README.md links the guide;
 * - every example configuration validates; metric names and configuration keys the
 *   guide names exist;
 * - the "add a stage" example of the developer guide is the code below, and works.
 */

const ROOT = resolve(import.meta.dirname, '..', '..');
const GUIDE = join(ROOT, 'docs', 'guide');
const read = (p: string): string => readFileSync(join(ROOT, p), 'utf8');
const chapters = readdirSync(GUIDE)
  .filter((f) => f.endsWith('.md'))
  .sort();

interface GuideCommand {
  file: string;
  line: number;
  command: string;
}

const normalise = (s: string): string => s.replace(/\s+/g, ' ').trim();

/** Lines of shell text with backslash continuations joined; each entry keeps its first line number. */
function logicalLines(text: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let cur = lines[i] as string;
    while (/\\\s*$/.test(cur) && i + 1 < lines.length) cur = cur.replace(/\\\s*$/, ' ') + (lines[++i] as string);
    out.push({ line: start + 1, text: cur });
  }
  return out;
}

/** Every ```sh block of a chapter, with the line its body starts on. */
function shBlocks(md: string): { line: number; body: string }[] {
  const blocks: { line: number; body: string }[] = [];
  const lines = md.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (!/^```sh\s*$/.test(lines[i] as string)) continue;
    const start = i + 1;
    let j = start;
    while (j < lines.length && !/^```\s*$/.test(lines[j] as string)) j++;
    blocks.push({ line: start + 1, body: lines.slice(start, j).join('\n') });
    i = j;
  }
  return blocks;
}

function guideCommands(): GuideCommand[] {
  const out: GuideCommand[] = [];
  for (const file of chapters) {
    for (const block of shBlocks(readFileSync(join(GUIDE, file), 'utf8'))) {
      for (const l of logicalLines(block.body)) {
        const t = l.text.trim();
        if (t === '' || t.startsWith('#') || t.startsWith('$ ')) continue;
        out.push({ file, line: block.line + l.line - 1, command: normalise(t) });
      }
    }
  }
  return out;
}

/** Where commands may live, as normalised logical lines (comment lines of shell files dropped). */
function haystack(): { source: string; lines: string[] }[] {
  const sources: { source: string; lines: string[] }[] = [];
  const shell = (p: string) =>
    sources.push({
      source: p,
      lines: logicalLines(read(p))
        .map((l) => normalise(l.text))
        .filter((t) => t !== '' && !t.startsWith('#')),
    });
  for (const dir of ['scripts/guide', 'scripts/provision']) {
    for (const f of readdirSync(join(ROOT, dir)).filter((x) => x.endsWith('.sh'))) shell(`${dir}/${f}`);
  }
  shell('.ci/run');
  const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;
  const npm: string[] = [];
  for (const [name, body] of Object.entries(scripts)) {
    npm.push(normalise(body), `npm run ${name}`);
    if (name === 'test' || name === 'start') npm.push(`npm ${name}`);
  }
  sources.push({ source: 'package.json', lines: npm });
  const walk = (dir: string): string[] =>
    readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? walk(`${dir}/${e.name}`) : e.name.endsWith('.ts') ? [`${dir}/${e.name}`] : [],
    );
  for (const f of walk('test')) sources.push({ source: f, lines: read(f).split('\n').map(normalise) });
  return sources;
}

/**
 * `command` occurs in `line` as a whole command: it starts the line or follows a
 * space, `(`, `;`, `&`, `|` or a quote, and nothing but a redirection, a pipe, a
 * control operator, a closing `)` or a quote follows it.
 */
export function containsCommand(line: string, command: string): boolean {
  for (let i = line.indexOf(command); i >= 0; i = line.indexOf(command, i + 1)) {
    const before = i === 0 ? '' : (line[i - 1] as string);
    if (before !== '' && !/[\s(;&|'"`]/.test(before)) continue;
    const after = line.slice(i + command.length).trimStart();
    if (after === '' || /^([|&;)<>'"`]|2>)/.test(after)) return true;
  }
  return false;
}

describe('the guide’s commands are commands something runs', () => {
  const commands = guideCommands();
  const sources = haystack();

  it('the guide has commands, in ```sh blocks without prompts', () => {
    expect(chapters.length).toBeGreaterThanOrEqual(11);
    expect(commands.length).toBeGreaterThan(40);
    const prompts: string[] = [];
    for (const file of chapters) {
      for (const block of shBlocks(readFileSync(join(GUIDE, file), 'utf8'))) {
        block.body.split('\n').forEach((l, k) => {
          if (l.trim().startsWith('$ ')) prompts.push(`${file}:${block.line + k}: ${l.trim()}`);
        });
      }
    }
    expect(prompts, 'use no "$ " prompts in ```sh blocks; put output in a separate ```text block').toEqual([]);
  });

  it('each command appears verbatim in scripts/guide, scripts/provision, package.json, .ci/run or a test', () => {
    const missing = commands
      .filter((c) => !sources.some((s) => s.lines.some((l) => containsCommand(l, c.command))))
      .map((c) => `docs/guide/${c.file}:${c.line}: ${c.command}`);
    expect(missing).toEqual([]);
  });

  it('commands of the guide are found in their own chapter’s script where one exists', () => {
    // A weaker match elsewhere (e.g. a test file mentioning the command) must not hide
    // a script that drifted: commands that start portcullis or curl it belong to a script.
    const guideScripts = sources.filter((s) => s.source.startsWith('scripts/guide/'));
    const live = commands.filter((c) => /^(node bin\/portcullis\.js|curl|[A-Z_]+=\$\(curl|openssl|kill|mv|cp|sed|grep)\b/.test(c.command));
    const missing = live
      .filter((c) => !guideScripts.some((s) => s.lines.some((l) => containsCommand(l, c.command))))
      .map((c) => `docs/guide/${c.file}:${c.line}: ${c.command}`);
    expect(live.length).toBeGreaterThan(20);
    expect(missing).toEqual([]);
  });

  it('matching is by whole command, not by any substring', () => {
    expect(containsCommand('curl -s 127.0.0.1:1/x > "$WORK/a.txt"', 'curl -s 127.0.0.1:1/x')).toBe(true);
    expect(containsCommand('TOKEN=$(curl -s x | node -p y)', 'curl -s x')).toBe(true);
    expect(containsCommand('if node a b > f; then', 'node a b')).toBe(true);
    expect(containsCommand('curl -s x -d evil', 'curl -s x')).toBe(false);
    expect(containsCommand('xcurl -s x', 'curl -s x')).toBe(false);
    expect(containsCommand('npm run demo -- --once', 'npm run demo')).toBe(false);
  });
});

describe('the guide’s structure and references', () => {
  const index = readFileSync(join(GUIDE, 'README.md'), 'utf8');

  it('the index links every chapter, in order', () => {
    const linked = [...index.matchAll(/\]\((\d\d-[a-z0-9-]+\.md)\)/g)].map((m) => m[1]);
    const numbered = chapters.filter((c) => /^\d\d-/.test(c));
    expect(numbered.length).toBe(10);
    expect([...new Set(linked)]).toEqual(numbered);
  });

  it('every relative link in the guide resolves to a file or directory of the repository', () => {
    const broken: string[] = [];
    for (const file of chapters) {
      const md = readFileSync(join(GUIDE, file), 'utf8');
      for (const m of md.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = (m[1] as string).split('#')[0] as string;
        if (target === '' || /^[a-z]+:/.test(target)) continue;
        if (!existsSync(resolve(GUIDE, target))) broken.push(`${file}: ${m[1]}`);
      }
    }
    expect(broken).toEqual([]);
  });

  // The developer guide's stage example names a file and a key that do not exist (yet).
  const EXAMPLE_ONLY = new Set(['src/stages/path-role.ts', 'routes[].require.pathRole']);

  it('every repository path the guide names in backticks exists', () => {
    const missing: string[] = [];
    for (const file of chapters) {
      const md = readFileSync(join(GUIDE, file), 'utf8');
      for (const m of md.matchAll(/`((?:src|test|docs|deploy|envoy|scripts|config|sdk|bench)\/[A-Za-z0-9_./*-]+)`/g)) {
        const p = (m[1] as string).replace(/\/$/, '');
        if (EXAMPLE_ONLY.has(p)) continue;
        if (p.includes('*')) {
          const dir = p.slice(0, p.lastIndexOf('/'));
          if (!existsSync(join(ROOT, dir))) missing.push(`${file}: ${p}`);
        } else if (!existsSync(join(ROOT, p))) missing.push(`${file}: ${p}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it('README.md links the guide from its Documentation list', () => {
    const readme = read('README.md');
    const docs = readme.slice(readme.indexOf('## Documentation'));
    expect(docs).toMatch(/^- \[User guide\]\(docs\/guide\/README\.md\)/m);
  });

  const NOT_METRICS = new Set(['portcullis_grpc', 'portcullis_client']);

  it('every metric the guide names is defined in src/', () => {
    const src: string[] = [];
    const walk = (dir: string): void => {
      for (const e of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
        if (e.isDirectory()) walk(`${dir}/${e.name}`);
        else if (e.name.endsWith('.ts')) src.push(read(`${dir}/${e.name}`));
      }
    };
    walk('src');
    const all = src.join('\n');
    const unknown = new Set<string>();
    for (const file of chapters) {
      const md = readFileSync(join(GUIDE, file), 'utf8');
      // Metric names in backticks (alone, with labels, or in an expression); not
      // prefixes such as `portcullis_process_*` nor other identifiers.
      for (const m of md.matchAll(/`[^`\n]*?\b(portcullis_[a-z_]*[a-z])(?=[{\s`)[=<>!])/g)) {
        const name = (m[1] as string).replace(/_(bucket|count|sum)$/, '');
        if (NOT_METRICS.has(name)) continue;
        if (!all.includes(`'${name}'`)) unknown.add(`${file}: ${name}`);
      }
    }
    expect([...unknown]).toEqual([]);
  });

  it('every configuration key the guide names is documented in docs/configuration.md', () => {
    const reference = read('docs/configuration.md');
    const unknown = new Set<string>();
    const top = 'listen|log|server|defaults|debug|tokenCache|issuers|development|roles|routes|kubernetes|hopTokens|hops';
    const keyRe = new RegExp(`\`((?:${top})(?:\\[\\])?(?:\\.[A-Za-z]+(?:\\[\\])?)+)\``, 'g');
    for (const file of chapters) {
      const md = readFileSync(join(GUIDE, file), 'utf8');
      for (const m of md.matchAll(keyRe)) {
        const key = m[1] as string;
        if (!EXAMPLE_ONLY.has(key) && !reference.includes(`\`${key}\``)) unknown.add(`${file}: ${key}`);
      }
    }
    expect([...unknown]).toEqual([]);
  });

  it('every example configuration validates (with the flags the guide gives it)', () => {
    const flags: Record<string, Parameters<typeof validateFile>[1]> = {
      'keycloak-routes.yaml': { keycloakUrl: 'https://keycloak.example', keycloakRealms: ['agentcube', 'tenant-b'], keycloakAudiences: ['agentcube-router'] },
    };
    const examples = readdirSync(join(GUIDE, 'examples')).filter((f) => f.endsWith('.yaml'));
    expect(examples.length).toBeGreaterThanOrEqual(5);
    for (const f of examples) {
      let out = '';
      const code = validateFile(join(GUIDE, 'examples', f), flags[f] ?? {}, (s) => (out += s));
      expect(code, `${f}: ${out}`).toBe(0);
    }
  });
});

// ---------------------------------------------------------------------------
// docs/guide/10-developer-guide.md, "Adding a stage": the code shown there is this
// code (the test below checks it), so it type-checks and does what the guide says.

type PathRoleRequire = RouteConfig['require'] & { pathRole?: string };

/**
 * require.pathRole: the caller must hold the role a template renders for this
 * request, e.g. "team:{path.team}:member" on /v1/teams/{team}/**. Denies missing_role.
 */
export function createPathRoleStageFactory(): StageFactory {
  return {
    name: 'path-role',
    compile(route: RouteConfig, at: string, _config: Config) {
      const source = (route.require as PathRoleRequire).pathRole;
      if (source === undefined) return undefined; // this route does not use the stage
      const params = new Set([...(route.match.path ?? '').matchAll(/\{(\w+)\}/g)].map((m) => m[1] as string));
      const compiled = compileTemplate(source, params);
      if (!compiled.ok) return { issues: [{ path: `${at}.require.pathRole`, message: compiled.message }] };
      const template = compiled.template;
      return {
        phase: 'after', // runs once the caller is authenticated and has the route's roles
        stage: {
          name: 'path-role',
          run(ctx: StageContext): StageResult {
            const role = template.render({ principal: ctx.principal, route: ctx.routeName, params: ctx.params });
            if (ctx.trace) ctx.trace['path-role'] = { required: role };
            if (role !== '' && ctx.principal?.effectiveRoles.has(role)) return undefined;
            return denial('missing_role', `requires the role ${role}`);
          },
        },
      };
    },
  };
}
// ---------------------------------------------------------------------------

describe('the developer guide’s stage example', () => {
  const THIS_FILE = readFileSync(join(ROOT, 'test', 'unit', 'guide.test.ts'), 'utf8');
  const YAML = `
roles:
  team:red:admin: [team:red:member]
routes:
  - name: team
    match: { path: "/v1/teams/{team}/**" }
`;

  function principal(sub: string, roles: string[], graph: Record<string, string[]>): Principal {
    return {
      issuerName: 'acme',
      issuer: 'https://idp.example/realms/acme',
      sub,
      qualifiedSub: `acme/${sub}`,
      roles,
      effectiveRoles: createRoleResolver(graph).expand(roles),
      claims: { sub },
      token: sub,
      expiresAt: Date.now() + 60_000,
      source: 'header:authorization',
    };
  }

  /** A verifier that treats the token as the name of a caller. */
  function verifier(config: Config): Verifier {
    const people: Record<string, string[]> = { alice: ['team:red:member'], carol: ['team:red:admin'], bob: [] };
    return {
      verify: (token) => principal(token, people[token] ?? [], config.roles),
      issuerNameOf: () => 'acme',
      cacheSize: () => 0,
    };
  }

  function build(pathRole: string, shadow?: string[]) {
    const config = parseConfig(YAML);
    const route = config.routes[0] as RouteConfig;
    (route.require as PathRoleRequire).pathRole = pathRole; // what step 1 (the schema) makes possible
    if (shadow) route.require.shadow = shadow;
    const factories = [...createStageModules().map((m) => m.factory), createPathRoleStageFactory()];
    return { config, checked: checkConfig(config, config.listen.admin, factories) };
  }

  function ask(who: string, path: string, pathRole = 'team:{path.team}:member', shadow?: string[]): { d: Decision; trace: DecisionTrace } {
    const { config, checked } = build(pathRole, shadow);
    if (!checked.ok) throw new Error(JSON.stringify(checked.issues));
    const decider = createDecider({ policy: checked.policy, verifier: verifier(config) });
    const input: CheckInput = {
      method: 'GET',
      host: 'api.example',
      path,
      query: '',
      headers: new Map([['authorization', `Bearer ${who}`]]),
      contextExtensions: new Map(),
    };
    const trace: DecisionTrace = {};
    const d = decider.decide(input, trace);
    if (d instanceof Promise) throw new Error('expected a synchronous decision');
    return { d, trace };
  }

  it('is shown in docs/guide/10-developer-guide.md exactly as it is here', () => {
    const md = readFileSync(join(GUIDE, '10-developer-guide.md'), 'utf8');
    const block = [...md.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1] as string).find((b) => b.includes('createPathRoleStageFactory(): StageFactory'));
    expect(block, 'the ts block with createPathRoleStageFactory').toBeDefined();
    const code = (block as string)
      .split('\n')
      .filter((l) => !/^import /.test(l) && !/^\/\/ src\//.test(l))
      .join('\n');
    expect(normalise(THIS_FILE)).toContain(normalise(code));
  });

  it('allows the holder of the rendered role, and inheritance counts', () => {
    expect(ask('alice', '/v1/teams/red/x').d.kind).toBe('allow');
    expect(ask('carol', '/v1/teams/red/x').d.kind).toBe('allow');
  });

  it('denies others with missing_role and records what it required', () => {
    const { d, trace } = ask('alice', '/v1/teams/blue/x');
    expect(d).toMatchObject({ kind: 'deny', status: 403, reason: 'missing_role', message: 'requires the role team:blue:member' });
    expect(trace.deniedBy).toBe('path-role');
    expect(trace.stages?.['path-role']).toEqual({ required: 'team:blue:member' });
    expect(ask('bob', '/v1/teams/red/x').d.kind).toBe('deny');
  });

  it('can be shadowed by its name', () => {
    const { d } = ask('alice', '/v1/teams/blue/x', 'team:{path.team}:member', ['path-role']);
    expect(d).toMatchObject({ kind: 'allow', wouldDeny: [{ requirement: 'path-role', reason: 'missing_role' }] });
  });

  it('reports a bad template at its configuration path', () => {
    const { checked } = build('team:{path.nope}:member');
    expect(checked.ok).toBe(false);
    if (!checked.ok) expect(checked.issues.map((i) => i.path)).toContain('routes[0].require.pathRole');
  });
});
