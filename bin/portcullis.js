#!/usr/bin/env node
// Entry point of the `portcullis` command. The TypeScript sources are compiled
// to dist/ by `npm run build` (run by `npm install` through the prepare script).
import { main } from '../dist/src/main.js';

const code = await main(process.argv.slice(2), process.env);
if (code !== undefined) process.exitCode = code;
