import type { Registry } from 'prom-client';
import type { Config } from '../config/schema.js';
import type { Clock, FetchFn, Scheduler } from '../core/types.js';
import type { Logger } from '../observability/logger.js';
import type { StageFactory } from '../pipeline/stage.js';
import { createExchangeModule } from './exchange.js';
import { createHopTokenModule } from './hop-token.js';
import { createOwnershipModule } from './ownership.js';
import { createPeerStageFactory } from './peer.js';

/**
 * The optional stages, in the order they run within their phase. Each module
 * owns the long-lived resources its stage needs (token endpoint clients,
 * Kubernetes watches, signing keys) and keeps them across reloads when their
 * settings do not change.
 *
 * Without services (`portcullis validate`) modules only compile and check
 * configuration; they must not start anything.
 */
export interface StageServices {
  clock: Clock;
  fetch: FetchFn;
  scheduler: Scheduler;
  logger: Logger;
  registry: Registry;
}

export interface StageHealth {
  name: string;
  ready: boolean;
  detail?: Record<string, unknown>;
}

export interface StageModule {
  readonly factory: StageFactory;
  /** After a config was compiled and before it is swapped in: start what it needs. */
  prepare?(config: Config): Promise<void>;
  /** After the swap: release what the new config no longer uses. */
  activated?(config: Config): void;
  health?(): StageHealth[];
  stop?(): Promise<void>;
  /** Endpoints this module serves on the admin port. */
  adminRoutes?(): { method: string; path: string; handler: () => { status: number; body: unknown } }[];
}

export function createStageModules(services?: StageServices): StageModule[] {
  const hop = createHopTokenModule(services);
  // Token producers last among the `after` stages: nothing is minted or exchanged for a request another check refuses.
  return [
    { factory: createPeerStageFactory() },
    createOwnershipModule(services),
    {
      ...hop,
      adminRoutes: () => [{ method: 'GET', path: '/.well-known/jwks.json', handler: () => ({ status: 200, body: hop.jwks() }) }],
    },
    createExchangeModule(services),
  ];
}
