#!/usr/bin/env node
// The fuse-export benchmark (`npm run bench`, `npm run bench -- --quick`).
//
// One fio matrix per section (bench/lib/sections.mjs: raw images on tmpfs
// and disk, qcow2, NBD), interleaved so that the machine's drift cancels
// out: for each section, every export is started once; then for each
// workload, for each repeat, fio runs against each target in turn.
// Results: a table on stdout, bench/results/<timestamp>.json and
// latest.json, latest.svg, and docs/BENCHMARKS.md.
//
// Needs root, /dev/fuse, fio, qemu-storage-daemon, qemu-img, nbdkit,
// nbdfuse and nbdcopy (scripts/bench.sh installs them) and a build
// (dist/cli/main.js).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { fioArgs, fioSeconds, parseFio, WORKLOADS } from './lib/fio.mjs';
import { clockTicks, cpuTicks, isMounted, killGroup, liveChildren, machineCpu, memory, resetPeakRss, run, sleep, umountLazy } from './lib/proc.mjs';
import { evaluateTargets, find, fmtIops, fmtLat, markdownReport, summarise, svgChart, TARGETS, textReport } from './lib/report.mjs';
import { FRESH, fioWhere, prepareSection, SECTIONS, SERVERLESS, startTarget } from './lib/sections.mjs';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const RESULTS = join(ROOT, 'bench', 'results');
const DOCS = join(ROOT, 'docs', 'BENCHMARKS.md');
const URING_PARAM = '/sys/module/fuse/parameters/enable_uring';
const MiB = 1024 * 1024;
const CHECK_BYTES = 64 * MiB;
// Seconds per run of --quick: about 110 runs of 2 s plus fio's own start
// and stop (about 0.3 s each) keep the whole quick run near five minutes.
const QUICK_RUNTIME = 2;
// Seconds per run of the full matrix: about 500 runs keep it near an hour.
const FULL_RUNTIME = 6;
const SECTION_IDS = SECTIONS.map((s) => s.id);
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
qemu-storage-daemon's nbd driver, against nbdkit's memory plugin).

  --quick              all sections but disk, ${QUICK_RUNTIME} s per run, 1 repeat (about 5 minutes)
  --runtime S          seconds per fio run (default ${FULL_RUNTIME}; --quick: ${QUICK_RUNTIME})
  --repeats N          repeats of each workload x target (default 2; --quick: 1)
  --images LIST        sections: ${SECTION_IDS.join(',')} (default all; --quick: all but disk)
  --targets LIST       ${TARGETS.map((t) => t.id).join(',')} (default all)
  --reference FILE     the minimal C FUSE server's source (compiled with gcc and
                       liburing): adds the 'reference' target to the tmpfs section
  --workloads LIST     ids: ${WORKLOADS.map((w) => w.id).join(', ')}
  --size SIZE          image size, e.g. 1G, 512M (default 1G)
  --threads N          threads of the exports (default: CPUs = ${availableParallelism()})
  --queue-depth N      fuse-export --queue-depth (default: its own)
  --max-steal PCT      redo a run (at most ${STEAL_TRIES - 1} times) when the hypervisor took more
                       than PCT % of the machine's CPU time during it (default ${DEFAULT_MAX_STEAL}; 100: never)
  --no-docs            do not rewrite docs/BENCHMARKS.md
  --from FILE          measure nothing: redo the table, latest.*, the docs from a results JSON
  -h, --help           this text
`;

// ---------------------------------------------------------------- options

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

function seconds(text, name) {
  const value = Number(text);
  if (!Number.isFinite(value) || value < 1 || Math.round(value * 1000) !== value * 1000) throw new Error(`--${name} takes seconds >= 1 (milliseconds at most), not ${text}`);
  return value;
}

function percent(text, name) {
  const value = Number(text);
  if (!Number.isFinite(value) || value < 0 || value > 100) throw new Error(`--${name} takes a percentage from 0 to 100, not ${text}`);
  return value;
}

function positiveInt(text, name) {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} takes a whole number >= 1, not ${text}`);
  return value;
}

function options() {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      runtime: { type: 'string' },
      repeats: { type: 'string' },
      images: { type: 'string' },
      targets: { type: 'string' },
      workloads: { type: 'string' },
      size: { type: 'string' },
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
  const custom = ['runtime', 'repeats', 'images', 'targets', 'workloads', 'size', 'threads', 'queue-depth'].some((k) => values[k] !== undefined);
  return {
    quick,
    mode: quick ? (custom ? 'quick (custom)' : 'quick') : custom ? 'custom' : 'full',
    runtime: values.runtime ? seconds(values.runtime, 'runtime') : quick ? QUICK_RUNTIME : FULL_RUNTIME,
    repeats: values.repeats ? positiveInt(values.repeats, 'repeats') : quick ? 1 : 2,
    images: values.images ? list(values.images, SECTION_IDS, 'images') : quick ? SECTION_IDS.filter((id) => id !== 'disk') : SECTION_IDS,
    targets: values.targets ? list(values.targets, TARGETS.map((t) => t.id), 'targets') : TARGETS.map((t) => t.id),
    workloads: values.workloads ? list(values.workloads, WORKLOADS.map((w) => w.id), 'workloads') : WORKLOADS.map((w) => w.id),
    size: values.size ? parseSize(values.size) : 1024 * MiB,
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

// ---------------------------------------------------------------- logging

const t0 = Date.now();
const elapsed = () => {
  const s = Math.round((Date.now() - t0) / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
};
const say = (message) => process.stderr.write(`[bench ${elapsed()}] ${message}\n`);

// ---------------------------------------------------------------- clean-up

/** Everything to undo, whatever way the benchmark ends. */
const state = {
  servers: [],
  mountpoints: [],
  dirs: [],
  uring: undefined, // { previous, restored }
  fio: undefined,
  aborting: false,
};
let cleaning;

function restoreUring() {
  if (!state.uring || state.uring.restored) return;
  try {
    writeFileSync(URING_PARAM, state.uring.previous);
    state.uring.restored = true;
    say(`restored ${URING_PARAM} to ${state.uring.previous}`);
  } catch (error) {
    say(`could not restore ${URING_PARAM} to ${state.uring.previous}: ${error.message}`);
  }
}

function removeDirs() {
  for (const dir of state.dirs.splice(0)) {
    // Never walk into a mount: detach whatever is still mounted first.
    for (const mp of state.mountpoints.filter((m) => m.startsWith(`${dir}/`))) if (isMounted(mp)) umountLazy(mp);
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch (error) {
      say(`could not remove ${dir}: ${error.message}`);
    }
  }
}

/** The orderly clean-up: stop fio and the exports, restore, remove. Idempotent. */
function cleanup() {
  cleaning ??= (async () => {
    if (state.fio) killGroup(state.fio.pid, 'SIGKILL');
    await Promise.all(state.servers.filter((s) => s.alive).map((s) => s.stop()));
    for (const mp of state.mountpoints) if (isMounted(mp)) umountLazy(mp);
    restoreUring();
    removeDirs();
  })();
  return cleaning;
}

/** The last resort when the process exits anyway (second Ctrl-C, crash). */
function cleanupSync() {
  for (const pid of liveChildren) {
    killGroup(pid, 'SIGKILL');
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone.
    }
  }
  for (const mp of state.mountpoints) if (isMounted(mp)) umountLazy(mp);
  restoreUring();
  removeDirs();
}

class Aborted extends Error {}

function installHandlers() {
  const onSignal = (signal) => {
    if (!state.aborting) {
      state.aborting = true;
      say(`${signal}: stopping the exports and cleaning up (again to force)`);
      if (state.fio) killGroup(state.fio.pid, 'SIGKILL');
      cleanup().finally(() => process.exit(130));
    } else {
      say(`${signal} again: killing everything`);
      cleanupSync();
      process.exit(130);
    }
  };
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, onSignal);
  process.on('exit', cleanupSync);
  const crash = (error) => {
    say(`internal error: ${error?.stack ?? error}`);
    cleanup().finally(() => process.exit(1));
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
}

// ---------------------------------------------------------------- machine

function sh(cmd, args) {
  const out = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  return out.status === 0 ? out.stdout.trim() : '';
}

function machineInfo() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  const memKiB = Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  return {
    kernel: release(),
    cpuModel: model,
    cores: availableParallelism(),
    memory: `${(memKiB / 1024 / 1024).toFixed(1)} GiB`,
    memoryBytes: memKiB * 1024 || totalmem(),
    fio: sh('fio', ['--version']) || 'unknown',
    qsd: sh('qemu-storage-daemon', ['--version']).split('\n')[0] || 'unknown',
    node: process.version,
  };
}

function fuseExportInfo() {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  return {
    version: pkg.version,
    commit: sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']) || 'unknown',
    dirty: sh('git', ['-C', ROOT, 'status', '--porcelain', '--', 'ts', 'crates']) !== '',
  };
}

function preflight(config) {
  const problems = [];
  const need = (cmd, args, why) => {
    if (!sh(cmd, args)) problems.push(`${cmd} is missing (${why})`);
  };
  if (process.getuid?.() !== 0) problems.push('run it as root: it mounts FUSE file systems and writes to /sys');
  if (!existsSync('/dev/fuse')) problems.push('/dev/fuse is missing');
  need('fio', ['--version'], 'scripts/bench.sh installs it');
  const targets = config.targets;
  if (targets.some((t) => t.startsWith('qsd'))) need('qemu-storage-daemon', ['--version'], 'Debian package qemu-system-common');
  if (config.images.includes('qcow2')) need('qemu-img', ['--version'], 'Debian package qemu-utils');
  if (config.images.includes('nbd')) {
    need('nbdkit', ['--version'], 'Debian package nbdkit');
    need('nbdcopy', ['--version'], 'Debian package libnbd-bin');
    if (targets.includes('nbdfuse')) need('nbdfuse', ['--version'], 'Debian package libnbd-bin');
  }
  if (config.reference && !existsSync(config.reference)) problems.push(`--reference ${config.reference}: no such file`);
  if (!existsSync(CLI)) problems.push(`${CLI} is missing: build first (npm run build), or use npm run bench`);
  if (problems.length) throw new Error(problems.join('\n'));
}

/** Compiles the C reference server into a directory of the run's own. */
function buildReference(source) {
  const dir = mkdtempSync('/tmp/fuse-export-bench-reference-');
  state.dirs.push(dir);
  const binary = `${dir}/reference`;
  const out = spawnSync('gcc', ['-O2', '-o', binary, source, '-luring', '-lpthread'], { encoding: 'utf8', timeout: 120_000 });
  if (out.status !== 0) throw new Error(`compiling ${source} failed (needs gcc and liburing-dev):\n${out.stderr}`);
  return binary;
}

/**
 * Turns FUSE-over-io_uring on; false when the kernel cannot. Called at the
 * start and again right before each io_uring export starts, because other
 * users of the machine (test suites) may switch it off meanwhile; the value
 * restored at the end is the one found the first time it had to be changed.
 */
function enableUring(notes) {
  if (!existsSync(URING_PARAM)) {
    notes.push(`${URING_PARAM} does not exist on kernel ${release()}: the io_uring target is skipped`);
    return false;
  }
  const previous = readFileSync(URING_PARAM, 'utf8').trim();
  if (previous === 'Y') return true;
  try {
    writeFileSync(URING_PARAM, 'Y');
    if (state.uring) {
      state.uring.restored = false;
      notes.push(`${URING_PARAM} had been switched back to ${previous} during the run (by another user of the machine?): set to Y again`);
    } else {
      state.uring = { previous, restored: false };
    }
    say(`${URING_PARAM}: ${previous} -> Y for the run`);
    return true;
  } catch (error) {
    notes.push(`could not write Y to ${URING_PARAM} (${error.message}): the io_uring target is skipped`);
    return false;
  }
}

// ---------------------------------------------------------------- exports

/** What a section's targets need from the run: clean-up registration, the CLI, logging. */
function sectionContext(config) {
  return {
    cli: CLI,
    referenceBinary: config.referenceBinary,
    say,
    ownDir: (dir) => state.dirs.push(dir),
    ownMountpoint: (mountpoint) => state.mountpoints.push(mountpoint),
    ownServer: (server) => state.servers.push(server),
  };
}

/** cmp of the first 64 MiB of what fio reads through `server` against `reference`, both read O_DIRECT when possible. */
async function compareMount(image, server, reference) {
  const count = Math.min(CHECK_BYTES, image.size) / MiB;
  const script = 'cmp <(dd if="$1" bs=1M count="$3" iflag=direct status=none) <(dd if="$2" bs=1M count="$3" $4 status=none)';
  const result = await run('bash', ['-c', script, 'cmp', server.file, reference, String(count), image.directWorks ? 'iflag=direct' : ''], { timeout: 60_000 });
  return { ok: result.code === 0 && !result.timedOut, bytes: count * MiB, detail: (result.stdout + result.stderr).trim() || (result.timedOut ? 'timed out (hung?)' : '') };
}

/** Starts `target` (an io_uring export once more when enable_uring was switched off meanwhile). */
async function startOne(target, image, config, result, options) {
  const start = () => startTarget(target, image, config, sectionContext(config), options);
  const usesUring = target.startsWith('io_uring');
  if (usesUring) enableUring(result.notes);
  try {
    return await start();
  } catch (error) {
    // Switched off between our check and the export's (a test suite
    // running next to us toggles it): once more.
    if (!usesUring || !/enable_uring/.test(error.message) || !enableUring(result.notes)) throw error;
    say(`${image.id}: ${target} export refused (${URING_PARAM} was switched off meanwhile): retrying`);
    return start();
  }
}

function describe(server) {
  if (server.kind !== 'fuse-export') return server.info.config;
  const i = server.info;
  return `${i.transport}, ${i.threads} threads, ${i.ringQueues} ring queues${i.queueDepth ? ` x ${i.queueDepth}` : ''}, directIo ${i.directIo}, format ${i.format ?? '?'}`;
}

async function startServers(image, config, result, targets) {
  const servers = {};
  for (const target of targets) {
    try {
      const server = await startOne(target, image, config, result);
      if (server.kind === 'qemu-storage-daemon') {
        for (const t of server.rejected) result.notes.push(`${image.id}: qemu-storage-daemon refused "${t.config.replace(/, aio=.*/, '')}": ${t.stderr.split('\n')[0].replace(/^.*: (?=[^:]+$)/, '')}`);
      }
      if (server.kind === 'fuse-export') {
        for (const w of server.complaints) result.notes.push(`${image.id}: fuse-export (${target}) warned at start: ${w.message}`);
        image.exportDirectIo ??= server.info.directIo;
      }
      server.image = image.id;
      server.peakRssBytes = memory(server.pid).hwm ?? null;
      state.servers.push(server);
      servers[target] = server;
      say(`${image.id}: ${target} ready (pid ${server.pid}): ${describe(server)}`);
    } catch (error) {
      const extra = (error.stderr ?? '').split('\n').filter((l) => l.trim() && !l.startsWith('{')).slice(-3).join(' | ');
      result.anomalies.push(`${image.id}: the ${target} export failed to start: ${error.message}${extra ? ` -- ${extra}` : ''}`);
      say(`${image.id}: ${target} failed to start: ${error.message}\n${error.stderr ?? ''}`);
    }
  }
  return servers;
}

function serverRecord(server) {
  return {
    image: server.image,
    target: server.target,
    kind: server.kind,
    pid: server.pid,
    args: server.args,
    info: server.info,
    peakRssBytes: server.peakRssBytes,
    exit: server.exit,
    stopMs: server.stopMs,
    stopped: server.stopped,
    notes: server.notes,
    complaints: server.complaints,
    stderrTail: server.stderr.filter((l) => !l.startsWith('{') || /"level":"(warn|error)"/.test(l)).slice(-20),
  };
}

/** What the server said when it stopped, against what fio did through it. */
function checkStop(server, image, runs, checkedBytes, result) {
  const where = `${image.id}/${server.target}`;
  for (const note of server.notes) result.anomalies.push(`${where}: ${note}`);
  if (server.stopMs > 5000) result.anomalies.push(`${where}: stopping took ${(server.stopMs / 1000).toFixed(1)} s`);
  const exit = server.exit ?? {};
  if (server.kind !== 'fuse-export') {
    // nbdfuse reports the SIGTERM that stopped it with exit status 1.
    const stoppedBySignal = server.kind === 'nbdfuse' && server.stderr.some((l) => /terminated by signal 15/.test(l));
    if (exit.code !== 0 && !stoppedBySignal) result.anomalies.push(`${where}: ${server.kind} exited ${exit.code ?? exit.signal}: ${server.stderr.slice(-3).join(' | ')}`);
    return;
  }
  if (exit.code !== 0) result.anomalies.push(`${where}: fuse-export exited with ${exit.code ?? exit.signal} after SIGTERM`);
  for (const e of server.complaints.filter((c) => c.event !== 'ready')) {
    if (!result.notes.some((n) => n.includes(e.message))) result.anomalies.push(`${where}: fuse-export logged ${e.level} "${e.message}"`);
  }
  const s = server.stopped;
  if (!s) {
    result.anomalies.push(`${where}: fuse-export logged no "stopped" event`);
    return;
  }
  if (s.reason !== 'signal') result.anomalies.push(`${where}: stopped for reason "${s.reason}", not "signal"`);
  for (const key of ['errors', 'abandoned', 'inFlight']) if (s[key]) result.anomalies.push(`${where}: stopped with ${key} = ${s[key]}`);
  if (server.transport === 'io_uring' && !(s.ringRequests > 0)) result.anomalies.push(`${where}: no ring requests counted over io_uring (legacyRequests ${s.legacyRequests})`);
  if (server.transport === 'legacy' && s.ringRequests > 0) result.anomalies.push(`${where}: ${s.ringRequests} ring requests over the legacy transport`);
  if (server.transport === 'passthrough') {
    // The kernel carried fio's I/O: none of it may have reached the export.
    if (!s.passthrough) result.anomalies.push(`${where}: the export says passthrough was off`);
    if (s.bytesRead + s.bytesWritten > 0) result.anomalies.push(`${where}: ${s.bytesRead + s.bytesWritten} bytes went through the export despite passthrough`);
    return;
  }
  const mine = runs.filter((r) => r.image === image.id && r.target === server.target && r.fio && r.serverPid === server.pid);
  const fioRead = mine.reduce((a, r) => a + r.fio.read.bytes, 0) + checkedBytes;
  const fioWritten = mine.reduce((a, r) => a + r.fio.write.bytes, 0);
  const fioIos = mine.reduce((a, r) => a + r.ios, 0);
  const requests = (s.legacyRequests ?? 0) + (s.ringRequests ?? 0);
  const off = (a, b) => (b > 0 ? Math.abs(a - b) / b : a > 0 ? 1 : 0);
  server.accounting = { fioRead, fioWritten, fioIos, bytesRead: s.bytesRead, bytesWritten: s.bytesWritten, requests };
  if (off(s.bytesRead, fioRead) > 0.01) result.anomalies.push(`${where}: fuse-export counted ${s.bytesRead} bytes read, fio and the checks read ${fioRead} (${(off(s.bytesRead, fioRead) * 100).toFixed(1)}% off)`);
  if (off(s.bytesWritten, fioWritten) > 0.01) result.anomalies.push(`${where}: fuse-export counted ${s.bytesWritten} bytes written, fio wrote ${fioWritten} (${(off(s.bytesWritten, fioWritten) * 100).toFixed(1)}% off)`);
  if (requests < fioIos) result.anomalies.push(`${where}: fuse-export counted ${requests} requests, fewer than the ${fioIos} I/Os fio completed`);
}

/** `qemu-img check` of the qcow2 a stopped export served: a clean image after all the writes. */
async function checkQcow2(server, image, result) {
  if (!server.imagePath?.endsWith('.qcow2')) return;
  const out = await run('qemu-img', ['check', '-q', server.imagePath], { timeout: 300_000 });
  if (out.code !== 0) result.anomalies.push(`${image.id}/${server.target}: qemu-img check of ${server.imagePath} exited ${out.code}: ${(out.stdout + out.stderr).trim().split('\n').slice(0, 3).join(' | ')}`);
}

// ---------------------------------------------------------------- runs

async function measure({ image, workload, repeat, position, target, server, config, ticks }) {
  const record = { image: image.id, workload: workload.id, repeat, position, target, startedAt: new Date().toISOString(), load1: loadavg()[0], ok: false };
  const { where, direct } = fioWhere(target, image, server);
  const args = fioArgs(workload, where, { direct, runtime: config.runtime, size: image.size });
  record.fioArgs = args;
  let cpuBefore;
  if (server) {
    record.serverPid = server.pid;
    server.peakRssBytes = Math.max(server.peakRssBytes ?? 0, memory(server.pid).hwm ?? 0);
    record.peakReset = resetPeakRss(server.pid);
    cpuBefore = cpuTicks(server.pid);
  }
  const limit = fioSeconds(workload, config.runtime) + 60;
  const machineBefore = machineCpu();
  const out = await run('fio', args, { timeout: limit * 1000, onSpawn: (child) => (state.fio = child) });
  state.fio = undefined;
  const machineAfter = machineCpu();
  record.wallMs = Math.round(out.ms);
  const machineTicks = machineAfter.total - machineBefore.total;
  if (machineTicks > 0) record.stealShare = (machineAfter.steal - machineBefore.steal) / machineTicks;
  if (server) {
    const cpuAfter = cpuTicks(server.pid);
    const mem = memory(server.pid);
    server.peakRssBytes = Math.max(server.peakRssBytes ?? 0, mem.hwm ?? 0);
    record.server = {
      pid: server.pid,
      cpuSeconds: cpuBefore !== undefined && cpuAfter !== undefined ? (cpuAfter - cpuBefore) / ticks : null,
      peakRssBytes: mem.hwm ?? null,
      rssBytes: mem.rss ?? null,
      alive: server.alive,
    };
  }
  if (out.timedOut) {
    record.error = `fio did not finish within ${limit} s (hung I/O?)${out.stuck ? '; fio stayed stuck after SIGKILL' : ''}`;
    record.hung = true;
    return record;
  }
  try {
    const fio = parseFio(out.stdout);
    record.fio = { read: fio.read, write: fio.write, cpu: fio.fioCpu, runtimeMs: fio.runtimeMs };
    Object.assign(record, {
      ios: fio.ios,
      iops: fio.iops,
      bwBytes: fio.bwBytes,
      clatMeanNs: fio.clatMeanNs,
      clatP99Ns: fio.clatP99Ns,
      slatMeanNs: fio.slatMeanNs,
      latMeanNs: fio.latMeanNs,
      latP99Ns: fio.latP99Ns,
      latMaxNs: fio.latMaxNs,
    });
    if (record.server && record.server.cpuSeconds !== null && fio.ios > 0) record.server.cpuUsPerIo = (record.server.cpuSeconds * 1e6) / fio.ios;
    if (out.code !== 0 || fio.error) record.error = `fio exited ${out.code} (job error ${fio.error}): ${out.stderr.trim().split('\n').slice(-3).join(' | ')}`;
    else if (fio.ios === 0) record.error = 'fio completed no I/O';
    else record.ok = true;
  } catch (error) {
    record.error = `fio exited ${out.code ?? out.signal}: ${error.message}: ${out.stderr.trim().split('\n').slice(-3).join(' | ')}`;
  }
  return record;
}

/** One run of a `fresh` workload: the target on a new, empty image, started and stopped around it. */
async function measureFresh(args, result) {
  const { image, target, config } = args;
  let server;
  try {
    server = await startOne(target, image, config, result, { fresh: true });
  } catch (error) {
    return { image: image.id, workload: args.workload.id, repeat: args.repeat, position: args.position, target, ok: false, error: `the export failed to start: ${error.message}` };
  }
  state.servers.push(server);
  server.image = image.id;
  const record = await measure({ ...args, server });
  await server.stop();
  state.servers = state.servers.filter((s) => s !== server);
  checkStop(server, image, [record], 0, result);
  await checkQcow2(server, image, result);
  rmSync(server.imagePath, { force: true });
  return record;
}

const fmtShare = (share) => (share === undefined ? '?' : `${Math.round(share * 100)}%`);

/**
 * One run, redone after a pause while the hypervisor took more than
 * `--max-steal` of the CPU time: the run with the least steal counts. The
 * others stay in `result.runs` marked `superseded` (the export served their
 * I/O, which its counters at the stop include).
 */
async function measureWithoutSteal(args, result, where) {
  const { workload, config } = args;
  const tries = [];
  for (;;) {
    const record = workload.fresh ? await measureFresh(args, result) : await measure(args);
    tries.push(record);
    const stolen = record.ok && record.stealShare > config.steal.max;
    if (!stolen || tries.length === config.steal.tries || state.aborting) break;
    say(`${where}: ${fmtIops(record.iops)} IOPS with ${fmtShare(record.stealShare)} of the CPU time stolen by the hypervisor; again in ${config.steal.pauseMs / 1000} s`);
    await sleep(config.steal.pauseMs);
  }
  const last = tries.at(-1);
  const kept = last.ok ? tries.reduce((best, r) => (r.stealShare < best.stealShare ? r : best)) : last;
  for (const r of tries.filter((x) => x !== kept)) result.runs.push({ ...r, ok: false, superseded: true });
  return kept;
}

async function benchSection(section, config, result) {
  const wanted = section.targets.filter((t) => config.activeTargets.includes(t) && (t !== 'reference' || config.referenceBinary));
  const workloads = WORKLOADS.filter((w) => section.workloads.includes(w.id) && config.workloads.includes(w.id));
  if (wanted.length === 0 || workloads.length === 0) return;
  const image = await prepareSection(section, config, sectionContext(config));
  image.targets = wanted;
  image.workloads = workloads.map((w) => w.id);
  result.images.push(image);
  const servers = await startServers(image, config, result, wanted.filter((t) => !SERVERLESS.has(t)));
  const targets = wanted.filter((t) => SERVERLESS.has(t) || servers[t]);
  const checked = {};
  for (const [t, server] of Object.entries(servers)) {
    // Every export starts with the data of the raw image, except the
    // reference server, which serves memory of its own.
    if (server.kind === 'reference') continue;
    const check = await compareMount(image, server, image.path);
    checked[t] = check.bytes;
    if (!check.ok) result.anomalies.push(`${image.id}/${t}: the mount differs from the image before the runs: ${check.detail}`);
  }
  const runsOf = (w) => (w.fresh ? targets.filter((t) => FRESH.has(t)) : targets);
  const total = workloads.reduce((n, w) => n + runsOf(w).length * config.repeats, 0);
  let done = 0;
  const dead = new Set();
  for (const [wi, workload] of workloads.entries()) {
    const order0 = runsOf(workload);
    for (let repeat = 0; repeat < config.repeats; repeat += 1) {
      const shift = (wi + repeat) % order0.length;
      const order = [...order0.slice(shift), ...order0.slice(0, shift)];
      for (const [position, target] of order.entries()) {
        if (state.aborting) throw new Aborted();
        done += 1;
        if (dead.has(target) && !workload.fresh) {
          result.runs.push({ image: image.id, workload: workload.id, repeat, position, target, ok: false, skipped: true, error: 'skipped: the export is down' });
          continue;
        }
        const server = servers[target];
        const args = { image, workload, repeat, position, target, server, config, ticks: result.clockTicks };
        const where = `${image.id} ${workload.id} #${repeat + 1} ${target}`;
        const record = await measureWithoutSteal(args, result, `[${done}/${total}] ${where}`);
        if (state.aborting) throw new Aborted();
        result.runs.push(record);
        if (record.ok) {
          say(`[${done}/${total}] ${where}: ${fmtIops(record.iops)} IOPS, clat mean ${fmtLat(record.clatMeanNs)} p99 ${fmtLat(record.clatP99Ns)}, lat mean ${fmtLat(record.latMeanNs)}${record.server?.cpuUsPerIo ? `, ${record.server.cpuUsPerIo.toFixed(2)} µs CPU/IO` : ''}, steal ${fmtShare(record.stealShare)}`);
        } else {
          say(`[${done}/${total}] ${where}: FAILED: ${record.error}`);
          result.anomalies.push(`${where}: ${record.error}`);
        }
        if (server && !workload.fresh && (!server.alive || record.hung)) {
          dead.add(target);
          if (!server.alive) result.anomalies.push(`${image.id}/${target}: the export exited during ${workload.id} (${JSON.stringify(server.exit)}); its remaining runs are skipped`);
          else {
            result.anomalies.push(`${image.id}/${target}: stopping the export after the hang; its remaining runs are skipped`);
            await server.stop({ termTimeout: 10_000 });
          }
        }
      }
    }
  }
  // Only an export with an image file of its own can be compared after
  // the writes (the NBD exports share their servers, the reference server
  // keeps its data in memory).
  for (const [t, server] of Object.entries(servers)) {
    if (dead.has(t) || !server.imagePath?.endsWith('.raw')) continue;
    const check = await compareMount(image, server, server.imagePath);
    checked[t] += check.bytes;
    if (!check.ok) result.anomalies.push(`${image.id}/${t}: the mount differs from the image after the runs: ${check.detail}`);
  }
  for (const server of Object.values(servers)) {
    server.peakRssBytes = Math.max(server.peakRssBytes ?? 0, memory(server.pid).hwm ?? 0);
  }
  say(`${image.id}: stopping the exports`);
  await Promise.all(Object.values(servers).map((s) => s.stop()));
  for (const server of Object.values(servers)) {
    checkStop(server, image, result.runs, checked[server.target] ?? 0, result);
    await checkQcow2(server, image, result);
    result.servers.push(serverRecord(server));
    if (server.accounting) result.servers.at(-1).accounting = server.accounting;
  }
  // The section's NBD servers go with it.
  await Promise.all(state.servers.filter((s) => s.kind === 'nbdkit').map((s) => s.stop()));
  state.servers = state.servers.filter((s) => !Object.values(servers).includes(s) && s.kind !== 'nbdkit');
  // Free the image (1 GiB of tmpfs or more) before the next section.
  const index = state.dirs.indexOf(image.workdir);
  if (index >= 0) {
    state.dirs.splice(index, 1);
    for (const mp of state.mountpoints.filter((m) => m.startsWith(`${image.workdir}/`))) if (isMounted(mp)) umountLazy(mp);
    rmSync(image.workdir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- results

/** Summaries, targets and the observations derived from the raw runs. */
function analyse(result) {
  result.summary = summarise(result.runs, result.images);
  result.targets = evaluateTargets(result.summary, result.servers, result.images.map((i) => i.id));
  const observations = [];
  for (const s of result.summary) {
    if (s.runs > 1 && s.iops && (s.iopsMax - s.iopsMin) / 2 / s.iops > 0.25) {
      observations.push(`noisy: ${s.image} ${s.workload} ${s.target} ranged from ${fmtIops(s.iopsMin)} to ${fmtIops(s.iopsMax)} IOPS over the repeats`);
    }
  }
  const fresh = new Set(WORKLOADS.filter((w) => w.fresh).map((w) => w.id));
  for (const r of result.runs.filter((x) => x.ok && x.fio && !fresh.has(x.workload))) {
    const over = r.fio.runtimeMs - result.config.runtime * 1000;
    if ((r.latMaxNs ?? 0) > 1e9 || over > 500) {
      observations.push(
        `stall: ${r.image} ${r.workload} #${r.repeat + 1} ${r.target}: slowest I/O ${r.latMaxNs ? `${(r.latMaxNs / 1e9).toFixed(2)} s` : '?'}, fio ran ${(r.fio.runtimeMs / 1000).toFixed(2)} s for a ${result.config.runtime} s runtime (${fmtIops(r.iops)} IOPS)`,
      );
    }
  }
  const steal = result.config.steal;
  for (const r of result.runs.filter((x) => steal && x.ok && x.stealShare > steal.max)) {
    observations.push(`steal: ${r.image} ${r.workload} #${r.repeat + 1} ${r.target}: the hypervisor took ${Math.round(r.stealShare * 100)}% of the CPU time in the least disturbed of ${steal.tries} tries (${fmtIops(r.iops)} IOPS)`);
  }
  for (const s of result.summary) {
    const limit = result.images.find((i) => i.id === s.image)?.limit ?? 'file';
    if (s.target !== limit && s.vsFile !== null && s.vsFile > 1.15) {
      observations.push(`${s.image} ${s.workload}: ${s.target} reached ${s.vsFile.toFixed(2)}x the IOPS of the section's limit (${limit})`);
    }
  }
  for (const s of result.summary.filter((x) => x.target === 'io_uring' && x.iops)) {
    const legacy = find(result.summary, s.image, s.workload, 'legacy');
    if (legacy?.iops && s.iops < legacy.iops * 0.95) {
      observations.push(`${s.image} ${s.workload}: io_uring (${fmtIops(s.iops)} IOPS) was slower than legacy (${fmtIops(legacy.iops)} IOPS)`);
    }
  }
  result.observations = observations;
  return result;
}

/** The JSON (when `file` is given), latest.json, latest.svg, the docs page and the table on stdout. */
function render(result, { file, docs }) {
  mkdirSync(RESULTS, { recursive: true });
  const json = `${JSON.stringify(result, null, 2)}\n`;
  if (file) writeFileSync(file, json);
  writeFileSync(join(RESULTS, 'latest.json'), json);
  writeFileSync(join(RESULTS, 'latest.svg'), svgChart(result));
  if (docs) {
    mkdirSync(dirname(DOCS), { recursive: true });
    writeFileSync(DOCS, markdownReport(result));
  }
  process.stdout.write(`${textReport(result)}\n\n`);
  say(`results: ${file ? `${file}, ` : ''}bench/results/latest.{json,svg}${docs ? ', docs/BENCHMARKS.md' : ''}`);
}

// ---------------------------------------------------------------- main

function stamp(date) {
  return date.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
}

async function main() {
  const config = options();
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
  const runs = sections.reduce((n, s) => {
    const targets = s.targets.filter((t) => config.activeTargets.includes(t) && (t !== 'reference' || config.referenceBinary));
    return n + s.workloads.filter((w) => config.workloads.includes(w)).length * targets.length;
  }, 0);
  const estimate = runs * config.repeats * (config.runtime + 0.6);
  say(`${config.mode} run: sections ${config.images.join(', ')}; ${runs} workload x target pairs x ${config.repeats} repeats x ${config.runtime} s: about ${Math.ceil(estimate / 60)} min`);
  const loads = [];
  const loadTimer = setInterval(() => loads.push(loadavg()[0]), 5000);
  loadTimer.unref();
  try {
    for (const section of sections) await benchSection(section, config, result);
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
