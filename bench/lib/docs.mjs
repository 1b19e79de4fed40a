// docs/BENCHMARKS.md after a run of some sections only (`--images`): the
// page of this run, with the sections it did not measure kept from the
// page of earlier runs, each section naming the run its figures come from.
//
// Both pages are bench/lib/report.mjs's own Markdown: a head, then `## `
// blocks (How to reproduce, Machine, Targets, one `Results:` block per
// section, Method, Observations). The merged page takes this run's head,
// How to reproduce and Method; per section the newer Results block; the
// Targets rows of the sections each block comes from; and the Machine and
// Observations of every run still shown, each under a `### Run:` heading.
import { evaluateTargets } from './report.mjs';

const RUN_LINE = /^Run: (.+)\.$/m;
const LATEST = /^Latest figures: (.+)\.$/m;
const BY_SECTION = /^- Section(?:s)? ([\w, -]+): (.+)\.$/gm;
const CHART = /^!\[[^\]]*\]\([^)]*\)$/m;
const CHART_RUN = /^The chart above is of the (.+?); /m;
const NOISE = /^\*\*Noise\.\*\*.*$/m;

/** The page's head (before the first `## `) and its blocks by title. */
function split(text) {
  const [head, ...rest] = text.split(/^(?=## )/m);
  return { head, blocks: rest.map((b) => ({ title: b.slice(3, b.indexOf('\n')).trim(), text: b.trimEnd() })) };
}

const body = (block) => block.text.slice(block.text.indexOf('\n') + 1).trim();
const listIds = (ids) => `${ids.length > 1 ? 'Sections' : 'Section'} ${ids.join(', ')}`;

/** The run each section of a page comes from: its `Run:` line, else the page's `Latest figures:`. */
function runsOf(page, sections) {
  const runs = new Map();
  const latest = LATEST.exec(page.head)?.[1];
  for (const match of page.head.matchAll(BY_SECTION)) for (const id of match[1].split(/,\s*/)) runs.set(id, match[2]);
  for (const block of page.blocks) {
    const section = sections.find((s) => block.title === `Results: ${s.label}`);
    if (!section) continue;
    const run = RUN_LINE.exec(block.text)?.[1] ?? runs.get(section.id) ?? latest;
    if (run) runs.set(section.id, run);
  }
  return runs;
}

/** Per earlier run, the part of a Machine or Observations block about it (`### Run:` parts, or the whole block for a page of one run). */
function partsByRun(block, runs) {
  if (!block) return new Map();
  const text = body(block).replace(NOISE, '').trim();
  const parts = text.split(/^(?=### Run: )/m).filter((p) => p.startsWith('### Run: '));
  if (parts.length === 0) {
    const only = [...new Set(runs.values())];
    return new Map(only.length === 1 ? [[only[0], text]] : []);
  }
  // Each part: `### Run: RUN`, a line naming its sections, then its text.
  return new Map(parts.map((p) => [p.slice(9, p.indexOf('\n')).trim(), p.slice(p.indexOf('\n')).trim().replace(/^.*\n/, '').trim()]));
}

/** The lines of the Markdown table in `block`: its header and alignment rows, its body rows. */
function table(block) {
  const lines = block ? body(block).split('\n').filter((l) => l.startsWith('| ')) : [];
  return { header: lines.slice(0, 2), rows: lines.slice(2) };
}

/**
 * The rows of the Targets table in page order (as evaluateTargets lists
 * them, the memory rows last, by section), each row's section known from
 * its text.
 */
function targetRows(rows, sections) {
  const all = evaluateTargets([], [], sections.map((s) => s.id));
  const sectionOf = (text) => all.find((t) => t.text === text)?.image ?? /peak RSS \(([\w-]+)\)/.exec(text)?.[1];
  const rank = (text) => {
    const i = all.findIndex((t) => t.text === text);
    return i >= 0 ? i : all.length + sections.findIndex((s) => s.id === sectionOf(text));
  };
  const text = (line) => line.split(' | ')[1] ?? '';
  return rows.map((line) => ({ line, section: sectionOf(text(line)), rank: rank(text(line)) }));
}

/** A part of an earlier run's Observations without the bullets about sections it no longer shows. */
function keepAbout(text, ids, sections) {
  const other = new Set(sections.map((s) => s.id).filter((id) => !ids.includes(id)));
  return text
    .split('\n')
    .filter((l) => !other.has(/^- ([\w-]+)[\s:/]/.exec(l)?.[1]))
    .join('\n');
}

/**
 * `fresh` (this run's page, of `measured` sections) merged into `previous`.
 * `sections`: every section, in page order ({ id, label, targets });
 * `charts`: this run's chart file per measured section, as the page links it.
 */
export function mergePages(fresh, previous, { measured, sections, charts }) {
  const now = split(fresh);
  const before = split(previous);
  const freshRun = LATEST.exec(now.head)?.[1] ?? 'latest run';
  const earlier = runsOf(before, sections);
  const runs = new Map(sections.map((s) => [s.id, measured.includes(s.id) ? freshRun : earlier.get(s.id)]).filter(([, r]) => r));
  const shown = sections.filter((s) => runs.has(s.id));
  const sectionsOf = (run) => shown.filter((s) => runs.get(s.id) === run).map((s) => s.id);
  const runOrder = [freshRun, ...new Set(shown.map((s) => runs.get(s.id)).filter((r) => r !== freshRun))];
  const block = (page, title) => page.blocks.find((b) => b.title === title);

  // Head: the runs by section, and which run the chart is of.
  const chartLine = CHART.exec(before.head)?.[0];
  const chartRun = CHART_RUN.exec(before.head)?.[1] ?? LATEST.exec(before.head)?.[1];
  let head = now.head.replace(
    LATEST,
    `Figures by section: a run of some sections (\`--images\`) keeps the others' figures from earlier runs.\n\n${runOrder.map((r) => `- ${listIds(sectionsOf(r))}: ${r}.`).join('\n')}`,
  );
  head = head.replace(
    /^Every figure on this page comes from this one run, on the host named/m,
    'The figures of each section come from one run (its `Run:` line), on the host named',
  );
  head = head.replace(/the ratios measured within one run, where the targets were interleaved, are\./, 'the ratios measured within one section, where the targets were interleaved, are (not across sections of different runs).');
  if (chartLine && chartRun) {
    head = head.replace(CHART, `${chartLine}\n\nThe chart above is of the ${chartRun}; a section measured by a later run has its own chart.`);
  }

  const machine = partsByRun(block(before, 'Machine'), earlier);
  const observations = partsByRun(block(before, 'Observations from this run') ?? block(before, 'Observations'), earlier);
  const perRun = (title, freshText, old) => {
    const out = [`## ${title}`, ''];
    for (const run of runOrder) {
      const text = run === freshRun ? freshText : old.has(run) ? keepAbout(old.get(run), sectionsOf(run), sections) : undefined;
      if (text === undefined) continue;
      out.push(`### Run: ${run}`, '', `${listIds(sectionsOf(run))}.`, '', text, '');
    }
    return out.join('\n').trim();
  };
  const freshMachine = body(block(now, 'Machine'));
  const noise = NOISE.exec(freshMachine)?.[0] ?? '';

  // Targets: this run's rows, and the earlier rows of the sections kept.
  const targets = block(now, 'Targets');
  const freshTable = table(targets);
  const kept = targetRows(table(block(before, 'Targets')).rows, sections).filter((r) => r.section && !measured.includes(r.section) && runs.has(r.section));
  const rows = [...targetRows(freshTable.rows, sections), ...kept].sort((a, b) => a.rank - b.rank);
  const intro = body(targets).split('\n| ')[0].trim();
  const targetsText = [`## Targets`, '', intro, '', ...freshTable.header, ...rows.map((r) => r.line)].join('\n');

  const results = shown.map((s) => {
    const title = `Results: ${s.label}`;
    if (!measured.includes(s.id)) {
      const old = block(before, title);
      return RUN_LINE.test(old.text) ? old.text : old.text.replace(/\n\n/, `\n\nRun: ${runs.get(s.id)}.\n\n`);
    }
    const chart = charts[s.id] ? `![IOPS relative to the section’s limit](${charts[s.id]})\n\n` : '';
    return block(now, title).text.replace(/\n\n/, `\n\nRun: ${freshRun}.\n\n${chart}`);
  });

  const out = [
    head.trimEnd(),
    block(now, 'How to reproduce').text,
    perRun('Machine', freshMachine.replace(NOISE, '').trim(), machine) + (noise ? `\n\n${noise}` : ''),
    targetsText,
    ...results,
    block(now, 'Method').text,
    perRun('Observations', body(block(now, 'Observations from this run')), observations),
  ];
  return `${out.join('\n\n')}\n`;
}
