// One measured run: fio against one target, with the export's CPU time and
// peak RSS and the hypervisor's steal around it; redone while the steal is
// too high. An export's helpers (fuse-export's qemu-nbd child: children of
// the server named `server.helper`) count with it: their CPU time is added
// to the server's, their peak RSS is kept beside its own.
import { rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { fioArgs, fioSeconds, parseFio } from './fio.mjs';
import { state } from './host.mjs';
import { say } from './log.mjs';
import { cpuOf, helperMemory, machineCpu, memory, notePeakRss, resetPeakRss, run, serverPids, sleep } from './proc.mjs';
import { fmtIops } from './report.mjs';
import { fioWhere } from './sections.mjs';
import { startOne } from './start.mjs';

async function measure({ image, workload, repeat, position, target, server, config, ticks }) {
  const record = { image: image.id, workload: workload.id, repeat, position, target, startedAt: new Date().toISOString(), load1: loadavg()[0], ok: false };
  const { where, direct } = fioWhere(target, image, server);
  const args = fioArgs(workload, where, { direct, runtime: config.runtime, size: image.size });
  record.fioArgs = args;
  let cpuBefore;
  let helperCpuBefore;
  let pids;
  if (server) {
    record.serverPid = server.pid;
    notePeakRss(server);
    pids = serverPids(server);
    record.peakReset = pids.map(resetPeakRss).every(Boolean);
    cpuBefore = cpuOf(pids);
    helperCpuBefore = cpuOf(pids.slice(1));
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
    const cpuAfter = cpuOf(pids);
    const helperCpuAfter = cpuOf(pids.slice(1));
    const mem = memory(server.pid);
    const helpers = helperMemory(pids.slice(1));
    notePeakRss(server);
    record.server = {
      pid: server.pid,
      cpuSeconds: cpuBefore !== undefined && cpuAfter !== undefined ? (cpuAfter - cpuBefore) / ticks : null,
      peakRssBytes: mem.hwm ?? null,
      rssBytes: mem.rss ?? null,
      ...(server.helper
        ? {
            helperPids: pids.slice(1),
            helperCpuSeconds: helperCpuBefore !== undefined && helperCpuAfter !== undefined ? (helperCpuAfter - helperCpuBefore) / ticks : null,
            helperPeakRssBytes: helpers.hwm ?? null,
            helperRssBytes: helpers.rss ?? null,
          }
        : {}),
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
    record.fio = { read: fio.read, write: fio.write, cpu: fio.fioCpu, runtimeMs: fio.runtimeMs, ...(fio.jobs ? { jobs: fio.jobs } : {}) };
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
    if (record.server?.helperCpuSeconds != null && fio.ios > 0) record.server.helperCpuUsPerIo = (record.server.helperCpuSeconds * 1e6) / fio.ios;
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
  for (const note of server.notes) result.anomalies.push(`${image.id}/${target}: ${note}`);
  rmSync(server.imagePath, { force: true });
  return record;
}

export const fmtShare = (share) => (share === undefined ? '?' : `${Math.round(share * 100)}%`);

/**
 * One run, redone after a pause while the hypervisor took more than
 * `--max-steal` of the CPU time: the run with the least steal counts. The
 * others stay in `result.runs` marked `superseded` (the export served their
 * I/O, which its counters at the stop include).
 */
export async function measureWithoutSteal(args, result, where) {
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
