#!/usr/bin/env node
// The fuse-export benchmark (`npm run bench`, `npm run bench -- --quick`).
//
// One fio matrix per section (bench/lib/sections.mjs: raw images on tmpfs
// and disk, qcow2, NBD, formats through QEMU, the storage daemon with one
// export and with many: bench/lib/scale.mjs), interleaved so that the machine's drift cancels
// out: for each section, every export is started once; then for each
// workload, for each repeat, fio runs against each target in turn.
// Results: a table on stdout, bench/results/<timestamp>.json and
// latest.json, and docs/BENCHMARKS.md with its charts (a run of some
// sections keeps the others there: bench/lib/docs.mjs).
//
// Needs root, /dev/fuse, fio, qemu-storage-daemon, qemu-img, qemu-nbd, nbdkit,
// nbdfuse and nbdcopy (scripts/bench.sh installs them) and a build
// (dist/cli/main.js).
//
// The benchmark measures; the test suite checks correctness. bench/lib/:
// options (the command line), machine (what the host is and has), host
// (what the run changes and undoes), sections and servers (the images and
// the exports under test), start, matrix and measure (the runs), fio,
// results, report and docs (what is derived and written), proc and log.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { buildReference, fuseExportInfo, machineInfo, preflight } from './lib/machine.mjs';
import { Aborted, cleanup, enableUring, installHandlers } from './lib/host.mjs';
import { say } from './lib/log.mjs';
import { benchSection } from './lib/matrix.mjs';
import { benchScale } from './lib/scale.mjs';
import { readOptions } from './lib/options.mjs';
import { RESULTS } from './lib/paths.mjs';
import { clockTicks } from './lib/proc.mjs';
import { analyse, render } from './lib/results.mjs';
import { SECTIONS, targetsToRun } from './lib/sections.mjs';

function stamp(date) {
  return date.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
}

async function main() {
  const config = readOptions();
  if (config.from) {
    const result = JSON.parse(readFileSync(config.from, 'utf8'));
    render(analyse(result), { docs: config.docs });
    return 0;
  }
  preflight(config);
  installHandlers();
  const startedAt = new Date();
  const result = {
    startedAt: startedAt.toISOString(),
    config: { ...config },
    machine: machineInfo(),
    fuseExport: fuseExportInfo(),
    clockTicks: clockTicks(),
    images: [],
    servers: [],
    runs: [],
    notes: [],
    anomalies: [],
  };
  config.activeTargets = [...config.targets];
  if (!enableUring(result.notes)) config.activeTargets = config.activeTargets.filter((t) => !t.startsWith('io_uring'));
  if (config.reference && config.activeTargets.includes('reference')) config.referenceBinary = buildReference(config.reference);
  else result.notes.push('the C reference server was not measured (give its source with --reference)');
  const sections = SECTIONS.filter((s) => config.images.includes(s.id));
  const runs = sections.reduce((n, s) => n + s.workloads.filter((w) => config.workloads.includes(w)).length * targetsToRun(s, config).length, 0);
  const estimate = runs * config.repeats * (config.runtime + 0.6);
  say(`${config.mode} run: sections ${config.images.join(', ')}; ${runs} workload x target pairs x ${config.repeats} repeats x ${config.runtime} s: about ${Math.ceil(estimate / 60)} min`);
  const loads = [];
  const loadTimer = setInterval(() => loads.push(loadavg()[0]), 5000);
  loadTimer.unref();
  try {
    for (const section of sections) await (section.kind === 'scale' ? benchScale : benchSection)(section, config, result);
  } catch (error) {
    clearInterval(loadTimer);
    if (error instanceof Aborted) return new Promise(() => {}); // the signal handler exits
    if (result.runs.length) {
      mkdirSync(RESULTS, { recursive: true });
      writeFileSync(join(RESULTS, `${stamp(startedAt)}-failed.json`), `${JSON.stringify({ ...result, error: String(error?.stack ?? error) }, null, 2)}\n`);
    }
    throw error;
  } finally {
    await cleanup();
  }
  clearInterval(loadTimer);
  loads.push(...result.runs.filter((r) => r.load1 !== undefined).map((r) => r.load1));
  const finishedAt = new Date();
  result.finishedAt = finishedAt.toISOString();
  result.durationMs = finishedAt - startedAt;
  result.load = loads.length ? { min: Math.min(...loads), max: Math.max(...loads) } : undefined;
  analyse(result);
  result.config.activeTargets = config.activeTargets;

  const file = join(RESULTS, `${stamp(startedAt)}${config.quick ? '-quick' : ''}.json`);
  render(result, { file, docs: config.docs });
  say(`done in ${(result.durationMs / 1000).toFixed(0)} s`);
  return result.runs.some((r) => r.ok) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  async (error) => {
    say(`failed: ${error?.message ?? error}`);
    await cleanup();
    process.exit(1);
  },
);
