// --stats-interval: the counters as rates, logged as `stats` events, and on
// a terminal a live one-line status.
import type { ExportStats } from '../lifecycle/export.js';

export interface Rates {
  iops: number;
  readBytesPerSecond: number;
  writeBytesPerSecond: number;
  inFlight: number;
  requests: number;
  errors: number;
}

/** Rates between two samples `seconds` apart. */
export function rates(before: ExportStats, after: ExportStats, seconds: number): Rates {
  const requests = (s: ExportStats) => s.legacyRequests + s.ringRequests;
  const per = (n: number) => (seconds > 0 ? Math.round(n / seconds) : 0);
  return {
    iops: per(requests(after) - requests(before)),
    readBytesPerSecond: per(after.bytesRead - before.bytesRead),
    writeBytesPerSecond: per(after.bytesWritten - before.bytesWritten),
    inFlight: after.inFlight,
    requests: requests(after),
    errors: after.errors,
  };
}

function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function statusLine(r: Rates): string {
  return (
    `${r.iops} IOPS  read ${humanBytes(r.readBytesPerSecond)}/s  write ${humanBytes(r.writeBytesPerSecond)}/s` +
    `  in flight ${r.inFlight}  requests ${r.requests}  errors ${r.errors}`
  );
}

/** Samples `stats` every `seconds`; returns the function that stops it. */
export function watchStats(stats: () => ExportStats, seconds: number, report: (r: Rates) => void): () => void {
  let previous = stats();
  let previousTime = process.hrtime.bigint();
  const timer = setInterval(() => {
    const now = process.hrtime.bigint();
    const current = stats();
    report(rates(previous, current, Number(now - previousTime) / 1e9));
    previous = current;
    previousTime = now;
  }, seconds * 1000);
  timer.unref();
  return () => clearInterval(timer);
}
