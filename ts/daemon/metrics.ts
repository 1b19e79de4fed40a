// `--metrics ADDRESS`: the daemon's exports in Prometheus's text format,
// through prom-client's registry. The counts live in the Rust core (atomics
// per I/O thread); a scrape reads them, so nothing is counted twice and the
// hot path never reaches JavaScript.
import { createServer, type Server } from 'node:http';
import { rmSync } from 'node:fs';
import client from 'prom-client';
import type { ExportCounters } from './daemon.js';

const LABELS = ['export', 'node'] as const;
type Label = (typeof LABELS)[number];

/** Where `--metrics` listens: a TCP port on a host, or a Unix socket. */
export type MetricsAddress = { host: string; port: number } | { path: string };

/** `--metrics`'s address, as the command line checked it. */
export function metricsAddress(text: string): MetricsAddress {
  if (text.startsWith('unix:')) return { path: text.slice('unix:'.length) };
  const colon = text.lastIndexOf(':');
  return { host: text.slice(0, colon).replace(/^\[(.*)\]$/, '$1'), port: Number(text.slice(colon + 1)) };
}

/** A counter whose value is read from the core at each scrape. */
function readCounter(registry: client.Registry, name: string, help: string, read: () => [Record<Label, string>, number][]) {
  return new client.Counter({
    name,
    help,
    labelNames: LABELS,
    registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) this.inc(labels, value);
    },
  });
}

const LATENCY = {
  name: 'fuse_export_image_latency_seconds',
  help: 'How long image operations took (read, write, other), from their start to their result',
};

/**
 * The latency histogram, whose buckets the core counted already.
 * prom-client's Histogram observes one value at a time, so the registry is
 * given a metric of the shape it reads (`get()`), with the core's counts
 * made cumulative as the format wants; prom-client still writes the text.
 */
function countedHistogram(bounds: number[], read: () => ExportCounters[]) {
  const get = async () => ({
    ...LATENCY,
    type: 'histogram',
    aggregator: 'sum',
    values: read().flatMap((counters) =>
      counters.latencies.flatMap(({ op, counts, sumSeconds }) => {
        const labels = { export: counters.id, node: counters.nodeName, op };
        let cumulative = 0;
        const buckets = counts.map((count, i) => {
          cumulative += count;
          const le = i < bounds.length ? bounds[i]! : '+Inf';
          return { labels: { ...labels, le }, value: cumulative, metricName: `${LATENCY.name}_bucket` };
        });
        return [
          ...buckets,
          { labels, value: sumSeconds, metricName: `${LATENCY.name}_sum` },
          { labels, value: cumulative, metricName: `${LATENCY.name}_count` },
        ];
      }),
    ),
  });
  return { ...LATENCY, type: 'histogram', aggregator: 'sum', get, reset() {}, collect() {} };
}

/** The registry of the daemon's metrics, read from `counters()` at each scrape. */
export function daemonRegistry(counters: () => ExportCounters[], latencyBounds: number[]): client.Registry {
  const registry = new client.Registry();
  const labelled = (value: (c: ExportCounters) => number) => (): [Record<Label, string>, number][] =>
    counters().map((c) => [{ export: c.id, node: c.nodeName }, value(c)]);
  readCounter(registry, 'fuse_export_requests_total', 'FUSE requests served', labelled((c) => c.legacyRequests + c.ringRequests));
  readCounter(registry, 'fuse_export_read_bytes_total', 'Bytes read through the export', labelled((c) => c.bytesRead));
  readCounter(registry, 'fuse_export_written_bytes_total', 'Bytes written through the export', labelled((c) => c.bytesWritten));
  readCounter(registry, 'fuse_export_errors_total', 'Requests answered with an error', labelled((c) => c.errors));
  new client.Gauge({
    name: 'fuse_export_in_flight',
    help: 'Requests being served now',
    labelNames: LABELS,
    registers: [registry],
    collect() {
      this.reset();
      for (const c of counters()) this.set({ export: c.id, node: c.nodeName }, c.inFlight);
    },
  });
  new client.Gauge({
    name: 'fuse_export_transport_info',
    help: 'The transport that serves each export (1)',
    labelNames: [...LABELS, 'transport'],
    registers: [registry],
    collect() {
      this.reset();
      for (const c of counters()) this.set({ export: c.id, node: c.nodeName, transport: c.transport }, 1);
    },
  });
  // The shape is the registry's, not one of prom-client's metric classes.
  registry.registerMetric(countedHistogram(latencyBounds, counters) as unknown as client.Metric);
  return registry;
}

/** Serves `registry` on GET /metrics (and /) at `address`. */
export async function serveMetrics(address: MetricsAddress, registry: client.Registry): Promise<{ close(): Promise<void> }> {
  const server: Server = createServer((request, response) => {
    if (request.method !== 'GET' || !['/', '/metrics'].includes(request.url ?? '')) {
      response.writeHead(404).end();
      return;
    }
    registry.metrics().then(
      (text) => response.writeHead(200, { 'Content-Type': registry.contentType }).end(text),
      (error: Error) => response.writeHead(500).end(error.message),
    );
  });
  if ('path' in address) rmSync(address.path, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if ('path' in address) server.listen(address.path, resolve);
    else server.listen(address.port, address.host, resolve);
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          if ('path' in address) rmSync(address.path, { force: true });
          resolve();
        });
      }),
  };
}
