import type { Config, RouteConfig } from '../config/schema.js';
import type { ConfigIssue, Denial } from '../core/errors.js';
import type { CheckInput, HeaderToSet, Principal } from '../core/types.js';

/**
 * The interface every optional stage implements (peer identity, ownership,
 * token exchange, hop tokens, ...). A stage is compiled per route from the
 * route's configuration by its factory; a route that does not use a stage has
 * no instance of it and pays nothing.
 *
 * `before` stages run after route selection and before credentials are read
 * (cheap checks on the connection, like the peer's SPIFFE ID); `after` stages
 * run once the caller is authenticated and has the required roles, in the
 * order the factories are registered.
 */
export interface StageContext {
  readonly input: CheckInput;
  readonly routeName: string;
  readonly params: Readonly<Record<string, string>>;
  /** Undefined in `before` stages and on anonymous routes. */
  readonly principal?: Principal;
  /** Present only when a trace was asked for; stages add what they used. */
  readonly trace?: Record<string, unknown>;
  /** True when evaluating for explain/dry-run: no side effects on shared caches or remote calls that count. */
  readonly dryRun?: boolean;
}

export interface StageOutput {
  /** Headers to set upstream (override route headers of the same name). */
  headers?: HeaderToSet[];
  /** Inbound headers to remove upstream. */
  remove?: string[];
  metadata?: Record<string, string | string[]>;
}

export type StageResult = Denial | StageOutput | undefined;

export interface RouteStage {
  readonly name: string;
  run(ctx: StageContext): StageResult | Promise<StageResult>;
}

export interface CompiledStage {
  phase: 'before' | 'after';
  stage: RouteStage;
}

export interface StageFactory {
  readonly name: string;
  /**
   * Compiles one route's settings. Returns undefined when the route does not
   * use this stage, or issues (with paths under `at`, e.g. `routes[3].require.owner`).
   */
  compile(route: RouteConfig, at: string, config: Config): CompiledStage | { issues: ConfigIssue[] } | undefined;
}
