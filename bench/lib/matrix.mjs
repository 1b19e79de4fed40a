// The matrix of one section: its targets x its workloads x the repeats.
import { WORKLOADS } from './fio.mjs';
import { Aborted, removeDir, state } from './host.mjs';
import { say } from './log.mjs';
import { fuseMountsUnder, notePeakRss, umountLazy } from './proc.mjs';
import { fmtIops, fmtLat } from './report.mjs';
import { FRESH, prepareSection, SERVERLESS, targetsToRun } from './sections.mjs';
import { fmtShare, measureWithoutSteal } from './measure.mjs';
import { serverRecord, startServers } from './start.mjs';

/**
 * The section's image (prepareSection), recorded in the result with the
 * targets and workloads this run measures on it; undefined when it has none.
 */
export async function openSection(section, config, result) {
  const targets = targetsToRun(section, config);
  const workloads = WORKLOADS.filter((w) => section.workloads.includes(w.id) && config.workloads.includes(w.id));
  if (targets.length === 0 || workloads.length === 0) return undefined;
  const image = await prepareSection(section, config);
  image.targets = targets;
  image.workloads = workloads.map((w) => w.id);
  result.images.push(image);
  return { image, targets, workloads };
}

/**
 * One section: its image, its exports started once, then for each workload,
 * for each repeat, each target in turn (the order rotating), so that the
 * machine's drift hits all targets alike.
 */
export async function benchSection(section, config, result) {
  const opened = await openSection(section, config, result);
  if (!opened) return;
  const { image, targets: wanted, workloads } = opened;
  const servers = await startServers(image, config, result, wanted.filter((t) => !SERVERLESS.has(t)));
  const targets = wanted.filter((t) => SERVERLESS.has(t) || servers[t]);
  await runMatrix({ image, servers, targets, workloads, config, result });
  await closeSection(image, servers, result);
}

/**
 * For each workload, for each repeat, fio against each of `targets` in
 * turn (the order rotating); `servers`: their exports, by target (one
 * server may serve several targets).
 */
export async function runMatrix({ image, servers, targets, workloads, config, result }) {
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
        const server = servers[target];
        // One server may serve several targets: a dead one is down for all.
        if (!workload.fresh && (dead.has(target) || server?.alive === false)) {
          result.runs.push({ image: image.id, workload: workload.id, repeat, position, target, ok: false, skipped: true, error: 'skipped: the export is down' });
          continue;
        }
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
}

/**
 * Stops `servers` (by target; one server may serve several) and records
 * them, saying what each had to be helped with and what was still mounted
 * under the image's directory once they had gone.
 */
export async function stopServers(image, servers, result) {
  const stopping = [...new Set(Object.values(servers))];
  for (const server of stopping) notePeakRss(server);
  await Promise.all(stopping.map((s) => s.stop()));
  for (const server of stopping) {
    for (const note of server.notes) result.anomalies.push(`${image.id}/${server.target}: ${note}`);
    result.servers.push(serverRecord(server));
  }
  state.servers = state.servers.filter((s) => !stopping.includes(s));
  const left = fuseMountsUnder(image.workdir);
  if (left.length) result.anomalies.push(`${image.id}: still mounted once its exports had stopped (unmounted with umount -l): ${left.join(', ')}`);
  for (const mountpoint of left) umountLazy(mountpoint);
}

/** Stops the section's exports (`servers`, by target) and its NBD servers, and removes its image. */
export async function closeSection(image, servers, result) {
  say(`${image.id}: stopping the exports`);
  await stopServers(image, servers, result);
  // The section's NBD servers go with it.
  await Promise.all(state.servers.filter((s) => s.kind === 'nbdkit').map((s) => s.stop()));
  state.servers = state.servers.filter((s) => s.kind !== 'nbdkit');
  // Free the image (1 GiB of tmpfs or more) before the next section.
  removeDir(image.workdir);
}
