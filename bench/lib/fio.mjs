// The fio workloads and the reading of fio's JSON output.

export const WORKLOADS = [
  { id: 'randread-4k-qd1', label: '4 KiB randread, iodepth 1, 1 job', short: ['randread 4K', 'QD1'], rw: 'randread', bs: '4k', iodepth: 1, numjobs: 1 },
  { id: 'randwrite-4k-qd1', label: '4 KiB randwrite, iodepth 1, 1 job', short: ['randwrite 4K', 'QD1'], rw: 'randwrite', bs: '4k', iodepth: 1, numjobs: 1 },
  { id: 'randrw70-4k-qd1', label: '4 KiB randrw 70/30, iodepth 1, 1 job', short: ['randrw 4K', 'QD1'], rw: 'randrw', rwmixread: 70, bs: '4k', iodepth: 1, numjobs: 1 },
  { id: 'randread-4k-qd16x2', label: '4 KiB randread, iodepth 16, 2 jobs', short: ['randread 4K', 'QD16x2'], rw: 'randread', bs: '4k', iodepth: 16, numjobs: 2 },
  { id: 'randwrite-4k-qd16x2', label: '4 KiB randwrite, iodepth 16, 2 jobs', short: ['randwrite 4K', 'QD16x2'], rw: 'randwrite', bs: '4k', iodepth: 16, numjobs: 2 },
  { id: 'randrw70-4k-qd16x2', label: '4 KiB randrw 70/30, iodepth 16, 2 jobs', short: ['randrw 4K', 'QD16x2'], rw: 'randrw', rwmixread: 70, bs: '4k', iodepth: 16, numjobs: 2 },
  { id: 'read-1m-qd4', label: '1 MiB sequential read, iodepth 4, 1 job', short: ['read 1M', 'QD4'], rw: 'read', bs: '1m', iodepth: 4, numjobs: 1 },
  { id: 'write-1m-qd4', label: '1 MiB sequential write, iodepth 4, 1 job', short: ['write 1M', 'QD4'], rw: 'write', bs: '1m', iodepth: 4, numjobs: 1 },
  // First touch: every 4 KiB block of a fresh image written once, in random
  // order (each job its half), so every cluster is allocated during the run.
  {
    id: 'alloc-randwrite-4k-qd16x2',
    label: '4 KiB randwrite into a fresh image, each block once, iodepth 16, 2 jobs',
    short: ['first touch 4K', 'QD16x2'],
    rw: 'randwrite',
    bs: '4k',
    iodepth: 16,
    numjobs: 2,
    fresh: true,
  },
];

/** How long fio may run: `runtime`, or for a `fresh` workload a cap well above what it needs. */
export function fioSeconds(workload, runtime) {
  return workload.fresh ? runtime * 6 : runtime;
}

/**
 * The fio command line of one measured run against `where`: { filename }
 * (through io_uring), { filenames } (several exports at once: the workload
 * on each, a reporting group each) or { nbdUri } (fio's own NBD client). A
 * `fresh` workload writes each block of `size` bytes once instead of running
 * for `runtime` seconds (which then only caps it).
 */
export function fioArgs(workload, where, { direct, runtime, size }) {
  const seconds = fioSeconds(workload, runtime);
  const half = size / 2;
  const engine = ['--ioengine=io_uring', `--direct=${direct ? 1 : 0}`];
  const options = [
    `--rw=${workload.rw}`,
    ...(workload.rwmixread ? [`--rwmixread=${workload.rwmixread}`] : []),
    `--bs=${workload.bs}`,
    `--iodepth=${workload.iodepth}`,
    `--numjobs=${workload.numjobs}`,
    ...(workload.fresh ? [`--size=${half}`, `--offset_increment=${half}`] : ['--time_based', '--norandommap']),
    `--runtime=${Number.isInteger(seconds) ? seconds : `${Math.round(seconds * 1000)}ms`}`,
    '--group_reporting',
    '--lat_percentiles=1',
    '--randrepeat=0',
    '--fallocate=none',
    '--output-format=json',
  ];
  if (where.filenames) {
    // Options before the first --name apply to every job.
    return [...engine, ...options, ...where.filenames.flatMap((file, i) => [`--name=${workload.id}-${i}`, `--filename=${file}`, ...(i ? ['--new_group'] : [])])];
  }
  return [`--name=${workload.id}`, ...(where.nbdUri ? ['--ioengine=nbd', `--uri=${where.nbdUri}`] : [`--filename=${where.filename}`, ...engine]), ...options];
}

function direction(d) {
  const ios = d?.total_ios ?? 0;
  return {
    ios,
    bytes: d?.io_bytes ?? 0,
    iops: d?.iops ?? 0,
    bwBytes: d?.bw_bytes ?? 0,
    clatMeanNs: ios > 0 ? d.clat_ns?.mean ?? null : null,
    clatP99Ns: ios > 0 ? d.clat_ns?.percentile?.['99.000000'] ?? null : null,
    slatMeanNs: ios > 0 ? d.slat_ns?.mean ?? null : null,
    latMeanNs: ios > 0 ? d.lat_ns?.mean ?? null : null,
    latP99Ns: ios > 0 ? d.lat_ns?.percentile?.['99.000000'] ?? null : null,
    latMaxNs: ios > 0 ? d.lat_ns?.max ?? null : null,
  };
}

/**
 * Figures of `parts` (the read and write sides of a job, or the jobs of a
 * run) taken together: I/Os, IOPS and bandwidth add up; means are weighted
 * by I/O count; p99s and maxima are the largest of the parts'.
 */
function combine(parts) {
  const ios = parts.reduce((n, p) => n + p.ios, 0);
  const sum = (key) => parts.reduce((n, p) => n + p[key], 0);
  const weighted = (key) => (ios > 0 ? parts.reduce((n, p) => n + (p[key] ?? 0) * p.ios, 0) / ios : null);
  const largest = (key) => {
    const values = parts.filter((p) => p.ios > 0 && p[key] !== null).map((p) => p[key]);
    return values.length ? Math.max(...values) : null;
  };
  return {
    ios,
    bytes: sum('bytes'),
    iops: sum('iops'),
    bwBytes: sum('bwBytes'),
    clatMeanNs: weighted('clatMeanNs'),
    clatP99Ns: largest('clatP99Ns'),
    slatMeanNs: weighted('slatMeanNs'),
    latMeanNs: weighted('latMeanNs'),
    latP99Ns: largest('latP99Ns'),
    latMaxNs: largest('latMaxNs'),
  };
}

/** One job's figures (group_reporting: the numjobs of one group merged); randrw: its read and write sides combined. */
function jobFigures(job) {
  const read = direction(job.read);
  const write = direction(job.write);
  return {
    error: job.error ?? 0,
    ...combine([read, write]),
    read,
    write,
    fioCpu: { usr: job.usr_cpu, sys: job.sys_cpu },
    runtimeMs: Math.max(job.read?.runtime ?? 0, job.write?.runtime ?? 0),
  };
}

/**
 * One run's figures from fio's JSON: its one job (group_reporting), or its
 * jobs combined (several exports at once, a group each: `jobs` keeps each
 * one's IOPS). Completion latency (clat: from submission to completion) and
 * total latency (lat = slat + clat). randrw: IOPS and bandwidth add up; means
 * are weighted by I/O count; p99 is the larger of the read and write p99s
 * (fio reports them separately).
 */
export function parseFio(stdout) {
  const start = stdout.indexOf('{');
  const end = stdout.lastIndexOf('}');
  if (start < 0 || end < start) throw new Error('fio printed no JSON');
  const data = JSON.parse(stdout.slice(start, end + 1));
  const jobs = (data.jobs ?? []).map(jobFigures);
  if (jobs.length === 0) throw new Error('fio JSON has no job');
  if (jobs.length === 1) return jobs[0];
  return {
    error: jobs.find((j) => j.error)?.error ?? 0,
    ...combine(jobs),
    read: combine(jobs.map((j) => j.read)),
    write: combine(jobs.map((j) => j.write)),
    fioCpu: { usr: jobs.reduce((n, j) => n + j.fioCpu.usr, 0), sys: jobs.reduce((n, j) => n + j.fioCpu.sys, 0) },
    runtimeMs: Math.max(...jobs.map((j) => j.runtimeMs)),
    jobs: jobs.map((j) => ({ ios: j.ios, iops: j.iops })),
  };
}
