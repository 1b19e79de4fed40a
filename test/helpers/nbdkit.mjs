// How to start nbdkit, for the tests (test/helpers/nbd.ts) and the benchmark
// (bench/lib/servers.mjs): its command line, the URI it serves and when it
// listens. Each side spawns and stops the process its own way. Plain
// JavaScript with JSDoc types: the benchmark runs under node without tsx.
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

let counter = 0;

/**
 * @typedef {object} NbdkitOptions
 * @property {string[]} [plugin] Plugin and its arguments, e.g. ['memory', '64M'].
 * @property {string[]} [filters] Filters, outermost first, e.g. ['error', 'log'].
 * @property {string[]} [params] Filter parameters, e.g. ['logfile=/tmp/x'].
 * @property {boolean} [readOnly]
 * @property {string} [socket] A socket path to reuse (a restarted server): the dead server's stale socket is removed first.
 * @property {number} [tcpPort] Listen on 127.0.0.1 at this port instead of a Unix socket.
 * @property {string} [tlsPsk] Require TLS with the pre-shared keys in this file.
 */

/**
 * nbdkit in the foreground, exiting with its parent, on a Unix socket under
 * `dir` (or on 127.0.0.1). It listens once it has written its pid file.
 * @param {string} dir Where its socket and pid file go.
 * @param {NbdkitOptions} [options]
 * @returns {{ argv: string[], uri: string, address: string, listening: () => boolean }}
 */
export function nbdkitCommand(dir, options = {}) {
  const { plugin = ['memory', '64M'], filters = [], params = [], readOnly = false, tcpPort, tlsPsk } = options;
  const socket = options.socket ?? join(dir, `nbdkit-${process.pid}-${counter++}.sock`);
  // nbdkit will not bind over a socket file its killed predecessor left.
  if (options.socket !== undefined) rmSync(options.socket, { force: true });
  const where = tcpPort !== undefined ? ['--ipaddr', '127.0.0.1', '--port', String(tcpPort)] : ['--unix', socket];
  const pidfile = join(dir, `nbdkit-${counter++}.pid`);
  const argv = [
    'nbdkit',
    '--foreground',
    '--exit-with-parent',
    '--pidfile',
    pidfile,
    ...where,
    ...(readOnly ? ['--readonly'] : []),
    ...(tlsPsk !== undefined ? ['--tls=require', `--tls-psk=${tlsPsk}`] : []),
    ...filters.map((f) => `--filter=${f}`),
    ...plugin,
    ...params,
  ];
  return {
    argv,
    uri: tcpPort !== undefined ? `nbd://127.0.0.1:${tcpPort}/` : `nbd+unix:///?socket=${socket}`,
    address: tcpPort !== undefined ? `127.0.0.1:${tcpPort}` : socket,
    listening: () => existsSync(pidfile) && readFileSync(pidfile, 'utf8').trim() !== '',
  };
}
