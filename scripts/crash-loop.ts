// `npm run crash-loop [-- --rounds N --seed S --formats qcow2,raw --transports legacy,io_uring --findings DIR]`:
// the crash loop of test/helpers/crash-loop.ts, N rounds per image format
// and transport, one summary each. A failed round leaves its images and
// logs under DIR. Exits 1 when any round failed.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { crashLoop, describeSummary, type CrashFormat, type CrashSummary } from '../test/helpers/crash-loop.js';
import { forceUnmountUnder } from '../test/helpers/mounts.js';
import type { IoUring } from '../test/helpers/transports.js';
import { kernelHasUring, switchUring } from '../test/helpers/uring.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '50' },
    seed: { type: 'string', default: String(Date.now() % 1_000_000) },
    formats: { type: 'string', default: 'qcow2,raw' },
    transports: { type: 'string', default: 'legacy,io_uring' },
    findings: { type: 'string', default: '/tmp/crash-findings' },
  },
});

const FORMATS: CrashFormat[] = ['qcow2', 'raw'];
const TRANSPORTS: Record<string, IoUring> = { legacy: 'off', io_uring: 'on' };

/** The comma-separated names of `option`, each one of `allowed`. */
function names(option: string, allowed: string[]): string[] {
  const given = option.split(',');
  const unknown = given.filter((name) => !allowed.includes(name));
  if (unknown.length) throw new Error(`unknown ${unknown.join(', ')}: choose from ${allowed.join(', ')}`);
  return given;
}

const rounds = Number(values.rounds);
const seed = Number(values.seed);
const formats = names(values.formats, FORMATS) as CrashFormat[];
const transports = names(values.transports, Object.keys(TRANSPORTS));

// A first Ctrl-C ends the loops after their round under way (they clean up
// after themselves); a second one leaves at once.
const interrupted = new AbortController();
process.on('SIGINT', () => {
  if (interrupted.signal.aborted) process.exit(130);
  console.log('crash-loop: stopping after the round under way (Ctrl-C again to leave at once)');
  interrupted.abort();
});

/** One format on one transport, in a directory of its own, with the kernel's io_uring switch on for io_uring. */
async function batch(format: CrashFormat, ioUring: IoUring): Promise<CrashSummary> {
  const dir = mkdtempSync(join(tmpdir(), 'fuse-export-crash-'));
  const restoreUring = ioUring === 'on' ? switchUring('Y') : undefined;
  try {
    return await crashLoop({
      format, ioUring, rounds, seed, dir, findings: values.findings, log: (line) => console.log(line), signal: interrupted.signal,
    });
  } finally {
    restoreUring?.();
    forceUnmountUnder(dir);
    rmSync(dir, { recursive: true, force: true });
  }
}

console.log(`crash-loop: seed ${seed}, ${rounds} rounds per format and transport`);
const summaries: CrashSummary[] = [];
for (const transport of transports) {
  if (transport === 'io_uring' && !kernelHasUring) {
    console.log(`crash-loop: no io_uring rounds: this kernel has no FUSE-over-io_uring`);
    continue;
  }
  for (const format of formats) {
    if (!interrupted.signal.aborted) summaries.push(await batch(format, TRANSPORTS[transport]));
  }
}
console.log(summaries.map(describeSummary).join('\n'));
const failed = summaries.reduce((sum, s) => sum + s.failedRounds, 0);
const total = summaries.reduce((sum, s) => sum + s.rounds, 0);
console.log(`crash-loop: ${total} rounds, ${failed} failed${failed ? `; see ${values.findings}` : ''}`);
process.exitCode = failed ? 1 : 0;
