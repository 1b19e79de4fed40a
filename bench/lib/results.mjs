// The run's results: the figures derived from the raw runs, and the files
// and the table they are written to.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { WORKLOADS } from './fio.mjs';
import { mergePages } from './docs.mjs';
import { say } from './log.mjs';
import { DOCS, RESULTS } from './paths.mjs';
import { evaluateTargets, find, fmtIops, markdownReport, summarise, svgChart, textReport } from './report.mjs';
import { SECTIONS } from './sections.mjs';

/** Summaries, targets and the observations derived from the raw runs. */
export function analyse(result) {
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
    const image = result.images.find((i) => i.id === s.image);
    const limit = image?.limit ?? 'file';
    // Several exports at once are meant to pass one.
    if (s.target !== limit && s.vsFile !== null && s.vsFile > 1.15 && image?.kind !== 'scale') {
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

/**
 * docs/BENCHMARKS.md and its charts; what it wrote. A run of every section
 * writes the page and latest.svg anew; a run of some sections (--images)
 * merges them into the page of earlier runs (docs.mjs), each with a chart of
 * its own, <section>.svg, leaving latest.svg, the page's chart of the
 * others, as it was.
 */
function writeDocs(result) {
  mkdirSync(dirname(DOCS), { recursive: true });
  const measured = result.images.map((i) => i.id);
  const previous = existsSync(DOCS) ? readFileSync(DOCS, 'utf8') : '';
  if (SECTIONS.every((s) => measured.includes(s.id)) || !previous.includes('\n## Results: ')) {
    writeFileSync(join(RESULTS, 'latest.svg'), svgChart(result));
    for (const s of SECTIONS) rmSync(join(RESULTS, `${s.id}.svg`), { force: true });
    writeFileSync(DOCS, markdownReport(result));
    return ['latest.svg', DOCS];
  }
  const charts = {};
  for (const image of result.images) {
    writeFileSync(join(RESULTS, `${image.id}.svg`), svgChart({ ...result, images: [image] }));
    charts[image.id] = `../bench/results/${image.id}.svg`;
  }
  const shown = SECTIONS.filter((s) => measured.includes(s.id) || previous.includes(`\n## Results: ${s.label}\n`));
  const page = markdownReport(result, { targetIds: shown.flatMap((s) => s.targets) });
  writeFileSync(DOCS, mergePages(page, previous, { measured, sections: SECTIONS, charts }));
  return [...measured.map((id) => `${id}.svg`), `${DOCS} (merged: the sections not measured kept)`];
}

/** The JSON (when `file` is given), latest.json, with `docs` the docs page and its charts; the table on stdout. */
export function render(result, { file, docs }) {
  mkdirSync(RESULTS, { recursive: true });
  const json = `${JSON.stringify(result, null, 2)}\n`;
  if (file) writeFileSync(file, json);
  writeFileSync(join(RESULTS, 'latest.json'), json);
  const written = docs ? writeDocs(result) : [];
  process.stdout.write(`${textReport(result)}\n\n`);
  say(`results: ${[file, 'latest.json', ...written].filter(Boolean).join(', ')}`);
}
