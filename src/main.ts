import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { createApp, DEFAULT_CONFIG_PATH } from './app.js';
import { parseConfig, type Overrides } from './config/load.js';
import { checkConfig } from './config/validate.js';
import { ConfigError, PortcullisError } from './core/errors.js';
import { runExplain } from './explain/cli.js';
import { createStageModules } from './stages/registry.js';

const USAGE = `usage:
  portcullis [serve] [--config FILE] [options]   start the server (embedded default config without --config)
  portcullis validate FILE [options]              check a config file; prints every problem with its path
  portcullis explain [--admin URL] <curl args>    explain the decision for a request (see portcullis explain --help)

options (each also settable by environment variable):
  --config FILE             PORTCULLIS_CONFIG
  --grpc-addr HOST:PORT     PORTCULLIS_GRPC_ADDR     gRPC ext_authz + gRPC health (default 0.0.0.0:9191)
  --http-addr HOST:PORT     PORTCULLIS_HTTP_ADDR     HTTP ext_authz, or "off" (default 0.0.0.0:9192)
  --admin-addr HOST:PORT    PORTCULLIS_ADMIN_ADDR    metrics, health, readiness (default 127.0.0.1:9901)
  --log-level LEVEL         PORTCULLIS_LOG_LEVEL     fatal|error|warn|info|debug|trace|silent
  --keycloak-url URL        PORTCULLIS_KEYCLOAK_URL  base URL of Keycloak, e.g. https://keycloak.example
  --keycloak-realm REALM    PORTCULLIS_KEYCLOAK_REALMS (comma-separated)   repeatable: one issuer per realm (tenant)
  --keycloak-audience AUD   PORTCULLIS_KEYCLOAK_AUDIENCES (comma-separated) repeatable: audiences those tokens must carry
  --mtls-cert-file FILE     PORTCULLIS_MTLS_CERT_FILE  serve gRPC and HTTP ext_authz over mTLS with this certificate
  --mtls-key-file FILE      PORTCULLIS_MTLS_KEY_FILE
  --mtls-ca-file FILE       PORTCULLIS_MTLS_CA_FILE    CA that signs the clients' (Envoys') certificates
  --mtls-allowed-client ID  PORTCULLIS_MTLS_ALLOWED_CLIENTS (comma-separated) repeatable: allowed client SPIFFE IDs
  --picod-auth-mode MODE    PORTCULLIS_PICOD_AUTH_MODE mtls|jwt: how the PicoD hop is secured (hops.picod.mode)
  -h, --help
`;

function list(env: string | undefined): string[] | undefined {
  const v = env?.split(',').map((s) => s.trim()).filter(Boolean);
  return v && v.length > 0 ? v : undefined;
}

export interface Cli {
  command: 'serve' | 'validate' | 'help';
  configPath?: string;
  overrides: Overrides;
}

export function parseCli(argv: string[], env: NodeJS.ProcessEnv): Cli {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        'grpc-addr': { type: 'string' },
        'http-addr': { type: 'string' },
        'admin-addr': { type: 'string' },
        'log-level': { type: 'string' },
        'keycloak-url': { type: 'string' },
        'keycloak-realm': { type: 'string', multiple: true },
        'keycloak-audience': { type: 'string', multiple: true },
        'mtls-cert-file': { type: 'string' },
        'mtls-key-file': { type: 'string' },
        'mtls-ca-file': { type: 'string' },
        'mtls-allowed-client': { type: 'string', multiple: true },
        'picod-auth-mode': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new PortcullisError('ERR_USAGE', `${(err as Error).message}\n\n${USAGE}`);
  }
  const { values: v, positionals } = parsed;
  const [cmd, ...rest] = positionals;
  if (v.help || cmd === 'help') return { command: 'help', overrides: {} };
  const command = cmd === undefined ? 'serve' : cmd;
  if (command !== 'serve' && command !== 'validate') throw new PortcullisError('ERR_USAGE', `unknown command "${cmd}"\n\n${USAGE}`);
  let configPath = v.config ?? env.PORTCULLIS_CONFIG;
  if (command === 'validate') {
    configPath = rest[0] ?? configPath;
    if (!configPath) throw new PortcullisError('ERR_USAGE', `validate needs a FILE\n\n${USAGE}`);
  } else if (rest.length > 0) throw new PortcullisError('ERR_USAGE', `unexpected argument "${rest[0]}"\n\n${USAGE}`);
  const overrides: Overrides = {
    grpc: v['grpc-addr'] ?? env.PORTCULLIS_GRPC_ADDR,
    http: v['http-addr'] ?? env.PORTCULLIS_HTTP_ADDR,
    admin: v['admin-addr'] ?? env.PORTCULLIS_ADMIN_ADDR,
    logLevel: v['log-level'] ?? env.PORTCULLIS_LOG_LEVEL,
    keycloakUrl: v['keycloak-url'] ?? env.PORTCULLIS_KEYCLOAK_URL,
    keycloakRealms: v['keycloak-realm'] ?? list(env.PORTCULLIS_KEYCLOAK_REALMS),
    keycloakAudiences: v['keycloak-audience'] ?? list(env.PORTCULLIS_KEYCLOAK_AUDIENCES),
    mtlsCertFile: v['mtls-cert-file'] ?? env.PORTCULLIS_MTLS_CERT_FILE,
    mtlsKeyFile: v['mtls-key-file'] ?? env.PORTCULLIS_MTLS_KEY_FILE,
    mtlsCaFile: v['mtls-ca-file'] ?? env.PORTCULLIS_MTLS_CA_FILE,
    mtlsAllowedClients: v['mtls-allowed-client'] ?? list(env.PORTCULLIS_MTLS_ALLOWED_CLIENTS),
    picodAuthMode: v['picod-auth-mode'] ?? env.PORTCULLIS_PICOD_AUTH_MODE,
  };
  for (const k of Object.keys(overrides) as (keyof Overrides)[]) if (overrides[k] === undefined) delete overrides[k];
  return { command, configPath, overrides };
}

/** `portcullis validate`: returns the process exit code. */
export function validateFile(file: string, overrides: Overrides, out: (s: string) => void): number {
  try {
    const factories = createStageModules().map((m) => m.factory);
    const config = parseConfig(readFileSync(file, 'utf8'), file, overrides, (c) => {
      const r = checkConfig(c, c.listen.admin, factories);
      return r.ok ? [] : r.issues;
    });
    const checked = checkConfig(config, config.listen.admin, factories);
    if (!checked.ok) throw new ConfigError(checked.issues, file);
    out(`${file}: ok (${config.routes.length} routes, ${checked.issuerNames.size} issuers)`);
    return 0;
  } catch (err) {
    if (err instanceof ConfigError) {
      const issues = err.message.includes(' in ') ? err : new ConfigError(err.issues, file);
      out(issues.message);
      return 1;
    }
    out(err instanceof Error ? err.message : String(err));
    return 1;
  }
}

export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number | undefined> {
  if (argv[0] === 'explain') return runExplain(argv.slice(1), (s) => process.stdout.write(s));
  let cli: Cli;
  try {
    cli = parseCli(argv, env);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    return 2;
  }
  if (cli.command === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (cli.command === 'validate') return validateFile(cli.configPath as string, cli.overrides, (s) => process.stdout.write(`${s}\n`));

  let app;
  try {
    app = createApp({ configPath: cli.configPath, overrides: cli.overrides });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    return 1;
  }
  if (!cli.configPath) app.logger.info({ config: DEFAULT_CONFIG_PATH }, 'no --config given: using the embedded default configuration (development issuer enabled)');
  try {
    await app.start();
  } catch (err) {
    app.logger.fatal({ error: (err as Error).message }, 'start-up failed');
    process.stderr.write(`${(err as Error).message}\n`);
    return 1;
  }
  const running = app;
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    running.logger.info({ signal }, 'signal received');
    running.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    running.logger.info('SIGHUP: reloading configuration');
    void running.reload();
  });
  return undefined;
}
