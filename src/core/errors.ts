import { REASONS, type ReasonCode } from './reasons.js';

/**
 * A stage's refusal, as a value. Stages return `Denial` instead of throwing;
 * the runner turns it into a `Deny` decision.
 */
export interface Denial {
  readonly denied: true;
  readonly reason: ReasonCode;
  readonly status: number;
  readonly message: string;
}

export function denial(reason: ReasonCode, message: string): Denial {
  return { denied: true, reason, status: REASONS[reason], message };
}

export function isDenial(v: unknown): v is Denial {
  return typeof v === 'object' && v !== null && (v as { denied?: unknown }).denied === true;
}

/** Error codes for things that are not request decisions (config, startup, I/O). */
export type PortcullisErrorCode =
  | 'ERR_CONFIG_INVALID'
  | 'ERR_CONFIG_READ'
  | 'ERR_JWKS_FETCH'
  | 'ERR_JWKS_INVALID'
  | 'ERR_DISCOVERY'
  | 'ERR_LISTEN'
  | 'ERR_USAGE';

export class PortcullisError extends Error {
  readonly code: PortcullisErrorCode;
  constructor(code: PortcullisErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'PortcullisError';
  }
}

export interface ConfigIssue {
  /** Dotted path into the config document, e.g. `routes[2].match.path`. */
  path: string;
  message: string;
}

export class ConfigError extends PortcullisError {
  readonly issues: readonly ConfigIssue[];
  constructor(issues: readonly ConfigIssue[], source?: string) {
    const where = source ? ` in ${source}` : '';
    super(
      'ERR_CONFIG_INVALID',
      `invalid configuration${where}:\n` + issues.map((i) => `  - ${i.path || '(root)'}: ${i.message}`).join('\n'),
    );
    this.issues = issues;
    this.name = 'ConfigError';
  }
}
