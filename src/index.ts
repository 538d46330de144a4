export { createApp, type App, type AppOptions, type Addresses } from './app.js';
export { parseConfig, readConfigFile, type Overrides } from './config/load.js';
export type { Config } from './config/schema.js';
export { REASONS, type ReasonCode } from './core/reasons.js';
export type { CheckInput, Decision, Principal, Clock, FetchFn } from './core/types.js';
