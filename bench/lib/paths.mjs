// Where the benchmark finds the build and writes its results.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI = join(ROOT, 'dist', 'cli', 'main.js');
export const DAEMON = join(ROOT, 'dist', 'daemon', 'main.js');
export const RESULTS = join(ROOT, 'bench', 'results');
export const DOCS = join(ROOT, 'docs', 'BENCHMARKS.md');
