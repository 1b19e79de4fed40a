// The matrix of one section: its targets x its workloads x the repeats.
import { WORKLOADS } from './fio.mjs';
import { Aborted, removeDir, state } from './host.mjs';
import { say } from './log.mjs';
import { notePeakRss } from './proc.mjs';
import { fmtIops, fmtLat } from './report.mjs';
import { FRESH, prepareSection, SERVERLESS, targetsToRun } from './sections.mjs';
import { fmtShare, measureWithoutSteal } from './measure.mjs';
import { serverRecord, startServers } from './start.mjs';

/**
 * One section: its image, its exports started once, then for each workload,
 * for each repeat, each target in turn (the order rotating), so that the
 * machine's drift hits all targets alike.
 */
export async function benchSection(section, config, result) {
  const wanted = targetsToRun(section, config);
  const workloads = WORKLOADS.filter((w) => section.workloads.includes(w.id) && config.workloads.includes(w.id));
  if (wanted.length === 0 || workloads.length === 0) return;
  const image = await prepareSection(section, config);
  image.targets = wanted;
  image.workloads = workloads.map((w) => w.id);
  result.images.push(image);
  const servers = await startServers(image, config, result, wanted.filter((t) => !SERVERLESS.has(t)));
  const targets = wanted.filter((t) => SERVERLESS.has(t) || servers[t]);
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
  for (const server of Object.values(servers)) notePeakRss(server);
  say(`${image.id}: stopping the exports`);
  await Promise.all(Object.values(servers).map((s) => s.stop()));
  for (const server of Object.values(servers)) {
    for (const note of server.notes) result.anomalies.push(`${image.id}/${server.target}: ${note}`);
    result.servers.push(serverRecord(server));
  }
  // The section's NBD servers go with it.
  await Promise.all(state.servers.filter((s) => s.kind === 'nbdkit').map((s) => s.stop()));
  state.servers = state.servers.filter((s) => !Object.values(servers).includes(s) && s.kind !== 'nbdkit');
  // Free the image (1 GiB of tmpfs or more) before the next section.
  removeDir(image.workdir);
}
