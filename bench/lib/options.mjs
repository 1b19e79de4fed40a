// The command line of `npm run bench`: its usage and the run's configuration.
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { WORKLOADS } from './fio.mjs';
import { TARGETS } from './report.mjs';
import { SCALE_BUSY, SECTIONS } from './sections.mjs';

const MiB = 1024 * 1024;
// Seconds per run of --quick: about 120 runs of 2 s plus fio's own start
// and stop (about 0.3 s each) keep the whole quick run near five minutes.
const QUICK_RUNTIME = 2;
// Seconds per run of the full matrix: about 500 runs keep it near an hour.
const FULL_RUNTIME = 6;
const SECTION_IDS = SECTIONS.map((s) => s.id);
// Exports in the scale section's daemon: the count, and --quick's.
const SCALE_EXPORTS = 256;
const QUICK_SCALE_EXPORTS = 16;
// On a shared host the hypervisor can take half the CPU time for minutes
// (steal), slowing whichever target runs then. Such a run is redone after a
// pause long enough for a burst to pass, at most this many times in all.
const STEAL_TRIES = 3;
const STEAL_PAUSE_MS = 10_000;
const DEFAULT_MAX_STEAL = 10;

const USAGE = `Usage: npm run bench -- [options]     (or: node bench/run.mjs [options], as root)

Runs fio against each section's targets, interleaved, and writes
bench/results/ and docs/BENCHMARKS.md. Sections: raw images on tmpfs and
on disk (the file itself, fuse-export over io_uring, over /dev/fuse
(legacy), with FUSE passthrough, the minimal C reference server with
--reference, qemu-storage-daemon); qcow2 (fuse-export on the raw image and
on a qcow2 of the same data, qemu-storage-daemon on the qcow2); NBD (fio's
own NBD client, fuse-export with and without multi-conn, nbdfuse,
qemu-storage-daemon's nbd driver, against nbdkit's memory plugin); formats
(a sparse VMDK: fio's NBD client at a bare qemu-nbd with the options
fuse-export gives its own qemu-nbd child, fuse-export, qemu-storage-daemon);
daemon (one export of fuse-export-storage-daemon against the CLI's); scale
(--exports exports in one daemon: start time, RSS, threads; randread on one
export and on ${SCALE_BUSY} at once).

  --quick              all sections but disk, ${QUICK_RUNTIME} s per run, 1 repeat (about 5 minutes)
  --runtime S          seconds per fio run (default ${FULL_RUNTIME}; --quick: ${QUICK_RUNTIME})
  --repeats N          repeats of each workload x target (default 2; --quick: 1)
  --images LIST        sections: ${SECTION_IDS.join(',')} (default all; --quick: all but disk)
  --targets LIST       ${TARGETS.map((t) => t.id).join(',')} (default all)
  --reference FILE     the minimal C FUSE server's source (compiled with gcc and
                       liburing): adds the 'reference' target to the tmpfs section
  --workloads LIST     ids: ${WORKLOADS.map((w) => w.id).join(', ')}
  --size SIZE          image size, e.g. 1G, 512M (default 1G)
  --exports N          exports in the scale section's daemon (default ${SCALE_EXPORTS}; --quick: ${QUICK_SCALE_EXPORTS}; at least ${SCALE_BUSY})
  --threads N          threads of the exports (default: CPUs = ${availableParallelism()})
  --queue-depth N      fuse-export --queue-depth (default: its own)
  --max-steal PCT      redo a run (at most ${STEAL_TRIES - 1} times) when the hypervisor took more
                       than PCT % of the machine's CPU time during it (default ${DEFAULT_MAX_STEAL}; 100: never)
  --no-docs            do not rewrite docs/BENCHMARKS.md and its charts (bench/results/*.svg);
                       without it a run of some sections keeps the others' figures there
  --from FILE          measure nothing: redo the table, latest.*, the docs from a results JSON
  -h, --help           this text
`;

function parseSize(text) {
  const match = /^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$/i.exec(String(text).trim());
  if (!match) throw new Error(`--size: cannot read ${JSON.stringify(text)} (try 1G or 512M)`);
  const scale = { '': 1, k: 1024, m: MiB, g: 1024 * MiB, t: 1024 * 1024 * MiB }[match[2].toLowerCase()];
  const bytes = Math.floor(Number(match[1]) * scale);
  if (bytes < 64 * MiB || bytes % MiB) throw new Error('--size must be a whole number of MiB, at least 64 MiB');
  return bytes;
}

function list(text, allowed, name) {
  const items = String(text).split(',').map((s) => s.trim()).filter(Boolean);
  for (const item of items) if (!allowed.includes(item)) throw new Error(`--${name}: unknown ${JSON.stringify(item)} (one of ${allowed.join(', ')})`);
  if (items.length === 0) throw new Error(`--${name} is empty`);
  return allowed.filter((a) => items.includes(a));
}

/** `text` as a number that `fits`, or an error saying what `--name` takes. */
function number(text, name, fits, takes) {
  const value = Number(text);
  if (!Number.isFinite(value) || !fits(value)) throw new Error(`--${name} takes ${takes}, not ${text}`);
  return value;
}
const seconds = (text, name) => number(text, name, (v) => v >= 1 && Math.round(v * 1000) === v * 1000, 'seconds >= 1 (milliseconds at most)');
const percent = (text, name) => number(text, name, (v) => v >= 0 && v <= 100, 'a percentage from 0 to 100');
const positiveInt = (text, name) => number(text, name, (v) => Number.isInteger(v) && v >= 1, 'a whole number >= 1');

/** The run's configuration from the command line; prints the usage and exits on --help. */
export function readOptions() {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      runtime: { type: 'string' },
      repeats: { type: 'string' },
      images: { type: 'string' },
      targets: { type: 'string' },
      workloads: { type: 'string' },
      size: { type: 'string' },
      exports: { type: 'string' },
      threads: { type: 'string' },
      'queue-depth': { type: 'string' },
      'max-steal': { type: 'string' },
      reference: { type: 'string' },
      'no-docs': { type: 'boolean', default: false },
      from: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const quick = values.quick;
  const custom = ['runtime', 'repeats', 'images', 'targets', 'workloads', 'size', 'exports', 'threads', 'queue-depth'].some((k) => values[k] !== undefined);
  return {
    quick,
    mode: quick ? (custom ? 'quick (custom)' : 'quick') : custom ? 'custom' : 'full',
    runtime: values.runtime ? seconds(values.runtime, 'runtime') : quick ? QUICK_RUNTIME : FULL_RUNTIME,
    repeats: values.repeats ? positiveInt(values.repeats, 'repeats') : quick ? 1 : 2,
    images: values.images ? list(values.images, SECTION_IDS, 'images') : quick ? SECTION_IDS.filter((id) => id !== 'disk') : SECTION_IDS,
    targets: values.targets ? list(values.targets, TARGETS.map((t) => t.id), 'targets') : TARGETS.map((t) => t.id),
    workloads: values.workloads ? list(values.workloads, WORKLOADS.map((w) => w.id), 'workloads') : WORKLOADS.map((w) => w.id),
    size: values.size ? parseSize(values.size) : 1024 * MiB,
    exports: values.exports ? number(values.exports, 'exports', (v) => Number.isInteger(v) && v >= SCALE_BUSY, `a whole number >= ${SCALE_BUSY}`) : quick ? QUICK_SCALE_EXPORTS : SCALE_EXPORTS,
    threads: values.threads ? positiveInt(values.threads, 'threads') : availableParallelism(),
    queueDepth: values['queue-depth'] ? positiveInt(values['queue-depth'], 'queue-depth') : undefined,
    steal: {
      max: (values['max-steal'] !== undefined ? percent(values['max-steal'], 'max-steal') : DEFAULT_MAX_STEAL) / 100,
      tries: STEAL_TRIES,
      pauseMs: STEAL_PAUSE_MS,
    },
    reference: values.reference,
    docs: !values['no-docs'],
    from: values.from,
  };
}
