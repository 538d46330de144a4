/**
 * Runs portcullis for the load benchmark in its own process, the way
 * `bin/portcullis.js --config FILE` does (createApp → start), and prints one
 * line `READY {"grpc":…,"http":…,"admin":…}` once it listens, so the harness
 * can use port 0 everywhere. SIGTERM stops it (in-flight checks drain).
 * Usage: node dist/bench/portcullis-server.js CONFIG.yaml
 */
import { createApp } from '../src/app.js';

const configPath = process.argv[2];
if (!configPath) {
  process.stderr.write('usage: portcullis-server.js CONFIG.yaml\n');
  process.exit(2);
}
const app = createApp({ configPath });
const addresses = await app.start();
process.stdout.write(`READY ${JSON.stringify(addresses)}\n`);
let stopping = false;
const stop = (): void => {
  if (stopping) return;
  stopping = true;
  void app.stop().then(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
