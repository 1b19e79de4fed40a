// The crash loop (issue 22, "crash consistency, measured"). Round after
// round, a writable export of one image is killed with SIGKILL at a random
// moment of a random write load with fsyncs (fsop.py marked_writes). Then
// qemu-img check must find no corruption (qcow2; leaked clusters are
// allowed), the image must export again (the CLI clearing the dead mount),
// and every block must read back as the writer's log allows: exactly the
// last write of it that an fsync acknowledged, or, where a later write was
// not acknowledged, one of the writes that may have reached it. The image
// carries over from round to round, so each round also writes to an image
// a crash left behind, and blocks no later round wrote must keep what was
// read back before. test/crash.test.ts runs a few rounds in `npm test`,
// scripts/crash-loop.ts (`npm run crash-loop`) as many as asked.
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliOptions, spawnCli, type CliExport } from './cli.js';
import { makeImage, makeMountpoint, MiB } from './files.js';
import { forceUnmountUnder, mountTable } from './mounts.js';
import { FSOP, fsop, killGroup, PYTHON, sleep, spawnChild, waitUntil, type Child } from './proc.js';
import { makeQcow2, qemuCheck } from './qcow2.js';
import { transportFor, type IoUring } from './transports.js';

/** The images the loop crashes: qcow2 (with the default O_DIRECT), and raw with --cache writeback. */
export type CrashFormat = 'qcow2' | 'raw';

const IMAGE_SIZE = 32 * MiB;
/** fsop.py's MARKER_BLOCK. */
const BLOCK = 4096;
/** The writer's own limit: far past any kill, so that it only ends by the kill. */
const WRITER_SECONDS = 60;
/** How long a round may wait for the writer's acknowledged fsyncs before the kill. */
const SYNC_WAIT_MS = 30_000;
/** How long processes get to end once they should (killed after it, and the round fails). */
const EXIT_WAIT_MS = 10_000;
/** A round's failures listed one by one; the rest are counted. */
const FAILURES_LISTED = 10;

/**
 * What a block holds, as fsop.py's marker_state says: 0 for zeroes,
 * [round, seq] for the whole marker of that write, "x" and a CRC-32 for
 * anything else (a torn write, a marker in the wrong place).
 */
export type BlockState = 0 | [number, number] | string;

/** What a round draws from its seed: the load, and when the kill comes. */
export interface RoundPlan {
  seed: number;
  threads: number;
  how: 'direct' | 'rw';
  killAfterSyncs: number;
  killDelayMs: number;
}

/** What read-backs found, counted in blocks. */
export interface Counts {
  writes: number;
  syncs: number;
  /** Holding exactly the marker of their last write, which an fsync acknowledged. */
  markersChecked: number;
  /** Holding zeroes, their last write an acknowledged punch or zero range. */
  holesChecked: number;
  /** Not written in the round, holding the marker an earlier round left. */
  markersFromEarlierRounds: number;
  /** Their last write not acknowledged, holding it or another write after the last acknowledged one. */
  unsyncedNewer: number;
  /** Their last write not acknowledged, holding what the last acknowledged write (or an earlier round) left. */
  unsyncedOlder: number;
  /** Their last write not acknowledged, holding neither: a write torn by the kill. */
  unsyncedTorn: number;
}

const noCounts = (): Counts => ({
  writes: 0, syncs: 0, markersChecked: 0, holesChecked: 0, markersFromEarlierRounds: 0,
  unsyncedNewer: 0, unsyncedOlder: 0, unsyncedTorn: 0,
});

/** Adds the counts of `from` to those of `into` (which may hold more than counts). */
function addCounts(into: Counts, from: Counts): void {
  for (const key of Object.keys(noCounts()) as (keyof Counts)[]) into[key] += from[key];
}

export interface RoundResult extends Counts {
  round: number;
  plan: RoundPlan;
  /** qcow2: the leaked clusters qemu-img check reported (0: clean). */
  leaks?: number;
  failures: string[];
}

export interface CrashSummary extends Counts {
  format: CrashFormat;
  transport: 'io_uring' | 'legacy';
  seed: number;
  rounds: number;
  failedRounds: number;
  /** qcow2: rounds whose check was clean, rounds with leaks only, the most leaked clusters seen. */
  checks?: { clean: number; leaksOnly: number; maxLeaks: number };
  /** Every failure, prefixed with its round. */
  failures: string[];
}

export interface CrashLoopOptions {
  format: CrashFormat;
  ioUring: IoUring;
  rounds: number;
  seed: number;
  /** Where the image and its mountpoint live (a fresh directory, emptied by the caller). */
  dir: string;
  /** Where a failed round leaves its image (before and after), logs and plan; nowhere when unset. */
  findings?: string;
  /** Told one line per round. */
  log?: (line: string) => void;
  /** Called after the crash (and qemu-img check), before the read-back, with the blocks whose last write left a marker an fsync acknowledged. */
  beforeReadBack?: (image: string, durableMarkers: number[]) => Promise<void>;
  /** Stops the loop after the round under way. */
  signal?: AbortSignal;
}

/** mulberry32: a small seeded PRNG, so that a seed replays a loop's plans. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The round's plan, from the loop's seed and the round alone (a round replays without the ones before). */
export function planRound(loopSeed: number, round: number): RoundPlan {
  const seed = (loopSeed + Math.imul(round, 0x9e3779b9)) >>> 0;
  const random = prng(seed);
  const between = (low: number, high: number) => low + Math.floor(random() * (high - low + 1));
  return {
    seed,
    threads: between(1, 3),
    how: random() < 0.5 ? 'direct' : 'rw',
    killAfterSyncs: between(1, 120),
    killDelayMs: between(0, 30),
  };
}

/** One write the writer announced (before issuing it): blocks block .. block + count - 1, markers or zeroes. */
interface Write {
  seq: number;
  block: number;
  count: number;
  thread: number;
  zeroes: boolean;
}

/** The writer's stdout: its writes in order, and each thread's last acknowledged fsync (the seq it covers). */
export interface WriterLog {
  writes: Write[];
  durable: Map<number, number>;
  syncs: number;
}

export function parseWriterLog(output: string): WriterLog {
  const log: WriterLog = { writes: [], durable: new Map(), syncs: 0 };
  for (const line of output.split('\n')) {
    if (!line.startsWith('{"w"') && !line.startsWith('{"s"')) continue;
    const entry = JSON.parse(line) as { w?: [number, number, number]; s?: number; t: number; z?: 1 };
    if (entry.w) {
      const [seq, block, count] = entry.w;
      log.writes.push({ seq, block, count, thread: entry.t, zeroes: entry.z === 1 });
    } else {
      log.durable.set(entry.t, entry.s!);
      log.syncs++;
    }
  }
  return log;
}

/** A write as one block sees it: what it leaves there, and whether an fsync acknowledged it. */
interface BlockWrite {
  seq: number;
  leaves: BlockState;
  durable: boolean;
}

/** Each written block's writes, in order (a block belongs to one thread). */
function writesByBlock(round: number, log: WriterLog): Map<number, BlockWrite[]> {
  const blocks = new Map<number, BlockWrite[]>();
  for (const { seq, block, count, thread, zeroes } of log.writes) {
    const durable = seq <= (log.durable.get(thread) ?? 0);
    for (let b = block; b < block + count; b++) {
      const writes = blocks.get(b) ?? [];
      blocks.set(b, writes);
      writes.push({ seq, leaves: zeroes ? 0 : [round, seq], durable });
    }
  }
  return blocks;
}

/** The blocks whose last write left a marker an fsync acknowledged. */
export function durableMarkers(round: number, log: WriterLog): number[] {
  return [...writesByBlock(round, log)]
    .filter(([, writes]) => writes.at(-1)!.durable && writes.at(-1)!.leaves !== 0)
    .map(([block]) => block);
}

const sameState = (a: BlockState, b: BlockState): boolean => JSON.stringify(a) === JSON.stringify(b);

function describeState(state: BlockState): string {
  if (state === 0) return 'zeroes';
  if (typeof state === 'string') return `other bytes (CRC-32 ${state.slice(1)})`;
  return `the marker of round ${state[0]} write ${state[1]}`;
}

type Verdict = Counts & { failures: string[] };

/**
 * Compares the read-back (`after`) with what the round may have left:
 * `before` (the last read-back) where it wrote nothing, the last
 * acknowledged write where that was a block's last write, and else any
 * write after the last acknowledged one, that one (or `before`), or a
 * torn mix.
 */
export function verifyReadBack(round: number, before: BlockState[], after: BlockState[], log: WriterLog): Verdict {
  const verdict: Verdict = { ...noCounts(), writes: log.writes.length, syncs: log.syncs, failures: [] };
  const written = writesByBlock(round, log);
  const fail = (block: number, what: string) => verdict.failures.push(`block ${block} (offset ${block * BLOCK}): ${what}`);
  before.forEach((previous, block) => {
    const got = after[block];
    const writes = written.get(block);
    if (!writes) {
      if (!sameState(got, previous)) fail(block, `not written this round, held ${describeState(previous)}, now ${describeState(got)}`);
      else if (Array.isArray(previous)) verdict.markersFromEarlierRounds++;
      return;
    }
    const last = writes.at(-1)!;
    if (last.durable) {
      if (!sameState(got, last.leaves)) {
        fail(block, `its last write ${last.seq} was acknowledged by an fsync, but it holds ${describeState(got)}, not ${describeState(last.leaves)}`);
      } else if (last.leaves === 0) verdict.holesChecked++;
      else verdict.markersChecked++;
      return;
    }
    const older = writes.filter((w) => w.durable).at(-1)?.leaves ?? previous;
    const newer = writes.filter((w) => !w.durable).map((w) => w.leaves);
    if (newer.some((state) => sameState(got, state))) verdict.unsyncedNewer++;
    else if (sameState(got, older)) verdict.unsyncedOlder++;
    else if (typeof got === 'string') verdict.unsyncedTorn++;
    else fail(block, `holds ${describeState(got)}: neither ${describeState(older)} nor a later write to it`);
  });
  return verdict;
}

/** qemu-img check of a qcow2: the leaked clusters it reports, or throws on anything worse. */
async function leakedClusters(image: string): Promise<number> {
  const { code, out } = await qemuCheck(image);
  if (code === 0) return 0;
  if (code === 3) return Number(/(\d+) leaked clusters? (?:were|was) found/.exec(out)?.[1] ?? NaN);
  throw new Error(`qemu-img check exited ${code} (2: corruption, 1: could not check):\n${out}`);
}

interface Target {
  image: string;
  mnt: string;
  format: CrashFormat;
  ioUring: IoUring;
}

/** Exports the image (writable or not) through the CLI; resolves once it serves. */
async function startExport({ image, mnt, format, ioUring }: Target, writable: boolean): Promise<CliExport> {
  const cache = format === 'raw' ? 'writeback' : undefined;
  const exp = spawnCli([...cliOptions({ writable, ioUring, cache, format, passthrough: 'off' }), image, mnt]);
  try {
    await exp.event('ready');
  } catch (error) {
    await stopProcesses([exp]);
    throw new Error(`the image does not export${writable ? ' writable' : ''}: ${(error as Error).message}`);
  }
  return exp;
}

/** SIGTERM, then the clean end: exit 0 and nothing mounted. */
async function stopExport(exp: CliExport): Promise<void> {
  exp.signal('SIGTERM');
  const { code, signal } = await exp.wait(EXIT_WAIT_MS);
  if (code !== 0) throw new Error(`the read-back export ended with ${code ?? signal} after SIGTERM:\n${exp.stderr()}`);
  if (mountTable().some((e) => e.mountpoint === exp.mountpoint)) throw new Error(`${exp.mountpoint} is still mounted after the stop`);
}

/** Kills what is still running of `processes` (their whole groups) and waits for them. */
async function stopProcesses(processes: (CliExport | Child | undefined)[]): Promise<void> {
  for (const started of processes) {
    if (!started || started.done) continue;
    killGroup(started.child);
    await started.exited;
  }
}

/** What a round left behind: mounts under `dir`, processes still running. Detaches and kills them. */
async function leftovers(dir: string, processes: (CliExport | Child | undefined)[]): Promise<string[]> {
  const found: string[] = [];
  const mounts = mountTable().filter((e) => e.mountpoint === dir || e.mountpoint.startsWith(`${dir}/`));
  if (mounts.length) found.push(`left mounted: ${mounts.map((e) => e.mountpoint).join(', ')}`);
  const running = processes.filter((p) => p && !p.done).map((p) => p!.child.spawnargs.join(' '));
  if (running.length) found.push(`left running: ${running.join('; ')}`);
  await stopProcesses(processes);
  forceUnmountUnder(dir);
  return found;
}

/**
 * The crash: waits for the plan's count of acknowledged fsyncs and its
 * delay, kills the exporter with SIGKILL while the writer writes, and
 * waits for both to end. Returns the writer's log.
 */
async function crash(exp: CliExport, writer: Child, plan: RoundPlan): Promise<WriterLog> {
  await waitUntil(() => parseWriterLog(writer.output()).syncs >= plan.killAfterSyncs || writer.done, {
    timeout: SYNC_WAIT_MS,
    interval: 5,
    what: `${plan.killAfterSyncs} acknowledged fsyncs`,
  });
  await sleep(plan.killDelayMs);
  if (writer.done) throw new Error(`the writer ended before the kill:\n${writer.output()}`);
  exp.signal('SIGKILL');
  const exit = await exp.wait(EXIT_WAIT_MS);
  if (exit.signal !== 'SIGKILL') throw new Error(`the exporter ended with ${exit.code ?? exit.signal} before the kill:\n${exp.stderr()}`);
  const ended = await writer.wait(EXIT_WAIT_MS);
  if (ended.signal) throw new Error(`the writer hung on the dead export (killed after ${EXIT_WAIT_MS} ms):\n${writer.output().slice(-2000)}`);
  return parseWriterLog(writer.output());
}

/** Exports the crashed image read-only (the CLI must clear the dead mount) and reads every block's state back. */
async function readBack(target: Target): Promise<BlockState[]> {
  const exp = await startExport(target, false);
  try {
    if (!exp.lines.some((l) => l.event === 'dead-mount')) throw new Error(`the CLI did not report the dead mount:\n${exp.stderr()}`);
    const answer = await fsop('marker_scan', [target.mnt], { timeout: 60_000 });
    if (!Array.isArray(answer.ok) || answer.ok.length !== IMAGE_SIZE / BLOCK) {
      throw new Error(`the read-back failed: ${JSON.stringify(answer).slice(0, 500)}`);
    }
    await stopExport(exp);
    return answer.ok as BlockState[];
  } finally {
    await stopProcesses([exp]);
  }
}

/** What a failed round leaves for a reproduction: the image before and after, the logs, the plan and the failures. */
function saveFinding(findings: string, name: string, files: Record<string, string>, texts: Record<string, string>): string {
  const where = join(findings, name);
  mkdirSync(where, { recursive: true });
  for (const [file, from] of Object.entries(files)) copyFileSync(from, join(where, file));
  for (const [file, text] of Object.entries(texts)) writeFileSync(join(where, file), text);
  return where;
}

/** One round: export, load, kill, check, read back, compare. `model` is the last read-back, updated in place. */
async function crashRound(options: CrashLoopOptions, target: Target, round: number, model: BlockState[]): Promise<RoundResult> {
  const plan = planRound(options.seed, round);
  const result: RoundResult = { round, plan, ...noCounts(), failures: [] };
  const before = join(options.dir, 'before-round');
  if (options.findings) copyFileSync(target.image, before);
  let exp: CliExport | undefined;
  let writer: Child | undefined;
  try {
    exp = await startExport(target, true);
    writer = spawnChild([PYTHON, FSOP, 'marked_writes', target.mnt, round, plan.seed, plan.threads, plan.how, WRITER_SECONDS]);
    const log = await crash(exp, writer, plan);
    if (target.format === 'qcow2') result.leaks = await leakedClusters(target.image);
    await options.beforeReadBack?.(target.image, durableMarkers(round, log));
    const after = await readBack(target);
    const verdict = verifyReadBack(round, model, after, log);
    const { failures, ...counts } = verdict;
    Object.assign(result, counts);
    result.failures.push(...failures.slice(0, FAILURES_LISTED));
    if (failures.length > FAILURES_LISTED) result.failures.push(`... and ${failures.length - FAILURES_LISTED} more blocks`);
    model.splice(0, model.length, ...after);
  } catch (error) {
    result.failures.push((error as Error).message);
  }
  result.failures.push(...(await leftovers(options.dir, [exp, writer])));
  if (result.failures.length && options.findings) {
    const name = `${target.format}-${transportFor(target.ioUring)}-seed${options.seed}-round${round}`;
    const where = saveFinding(options.findings, name, { 'before.img': before, 'after.img': target.image }, {
      'round.json': JSON.stringify({ ...result, ioUring: target.ioUring }, null, 2),
      'writer.log': writer?.output() ?? '',
      'exporter.log': exp?.stderr() ?? '',
    });
    result.failures.push(`saved in ${where}`);
  }
  return result;
}

/** The counts, in words (a round's or a loop's). */
function describeCounts(c: Counts): string {
  return (
    `${c.writes} writes, ${c.syncs} fsyncs; read back: ${c.markersChecked} fsync'd markers, ${c.holesChecked} fsync'd holes, ` +
    `${c.markersFromEarlierRounds} markers of earlier rounds; unsynced blocks: ${c.unsyncedNewer} newer, ` +
    `${c.unsyncedOlder} older, ${c.unsyncedTorn} torn`
  );
}

function describeRound(options: CrashLoopOptions, r: RoundResult): string {
  const { plan } = r;
  const check = r.leaks === undefined ? '' : `; qemu-img check: ${r.leaks ? `${r.leaks} leaked clusters` : 'clean'}`;
  return (
    `${options.format} ${transportFor(options.ioUring)} round ${r.round}/${options.rounds} (seed ${plan.seed}, ` +
    `writer threads: ${plan.threads}, ${plan.how}): killed after ${plan.killAfterSyncs} fsyncs + ${plan.killDelayMs} ms; ` +
    `${describeCounts(r)}${check}; ` +
    (r.failures.length ? `FAILED:\n  ${r.failures.join('\n  ')}` : 'ok')
  );
}

function addRound(summary: CrashSummary, r: RoundResult): void {
  summary.rounds++;
  addCounts(summary, r);
  if (summary.checks && r.leaks !== undefined) {
    if (r.leaks) summary.checks.leaksOnly++;
    else summary.checks.clean++;
    summary.checks.maxLeaks = Math.max(summary.checks.maxLeaks, r.leaks);
  }
  if (r.failures.length) summary.failedRounds++;
  summary.failures.push(...r.failures.map((f) => `round ${r.round} (seed ${r.plan.seed}): ${f}`));
}

/** Runs the rounds on one image of `format` over one transport; the summary counts what was checked and what failed. */
export async function crashLoop(options: CrashLoopOptions): Promise<CrashSummary> {
  const { format, ioUring, dir } = options;
  const image = format === 'qcow2' ? await makeQcow2(dir, 'disk.qcow2', IMAGE_SIZE) : makeImage(dir, 'disk.img', IMAGE_SIZE);
  const target: Target = { image, mnt: makeMountpoint(dir), format, ioUring };
  const model: BlockState[] = new Array<BlockState>(IMAGE_SIZE / BLOCK).fill(0);
  const summary: CrashSummary = {
    format, transport: transportFor(ioUring), seed: options.seed, rounds: 0, failedRounds: 0, ...noCounts(),
    checks: format === 'qcow2' ? { clean: 0, leaksOnly: 0, maxLeaks: 0 } : undefined, failures: [],
  };
  for (let round = 1; round <= options.rounds && !options.signal?.aborted; round++) {
    const result = await crashRound(options, target, round, model);
    options.log?.(describeRound(options, result));
    addRound(summary, result);
  }
  return summary;
}

/** The summary in a few lines, for people. */
export function describeSummary(s: CrashSummary): string {
  const check = s.checks
    ? `; qemu-img check: ${s.checks.clean} clean, ${s.checks.leaksOnly} leaks only (at most ${s.checks.maxLeaks} leaked clusters), ` +
      `${s.rounds - s.checks.clean - s.checks.leaksOnly} worse or not run`
    : '';
  return (
    `crash-loop ${s.format} ${s.transport} (seed ${s.seed}): ${s.rounds} rounds, ${s.failedRounds} failed; ` +
    `${describeCounts(s)}${check}` +
    (s.failures.length ? `\n  ${s.failures.join('\n  ')}` : '')
  );
}
