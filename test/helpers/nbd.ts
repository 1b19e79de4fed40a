// NBD servers for the tests: nbdkit and qemu-nbd on Unix sockets in the
// test's directory (or on 127.0.0.1), started in the foreground, stopped by
// their process id in teardown (and by the test when it wants them gone).
import type { ExecutionContext } from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { nbdkitCommand, type NbdkitOptions } from './nbdkit.mjs';
import { run, sleep, startChild, waitUntil, type Argv } from './proc.js';

export interface NbdServer {
  /** The URI to give fuse-export. */
  uri: string;
  /** The socket's path (Unix) or 127.0.0.1:PORT. */
  address: string;
  pid: number;
  /** Everything the server printed. */
  output: () => string;
  /** SIGKILL by pid; resolves once it is gone. */
  kill: () => Promise<void>;
  /** SIGTERM by pid; resolves once it is gone. */
  stop: () => Promise<void>;
}

let counter = 0;

/** Whether process `pid` still exists. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function serve(t: ExecutionContext, argv: Argv, uri: string, address: string, ready: () => boolean): Promise<NbdServer> {
  const child = startChild(t, argv);
  await waitUntil(() => ready() || child.child.exitCode !== null, { timeout: 15_000, what: `${argv[0]} to listen` });
  if (!ready()) throw new Error(`${argv.join(' ')} did not start:\n${child.output()}`);
  const pid = child.child.pid!;
  const end = async (signal: NodeJS.Signals) => {
    if (alive(pid)) process.kill(pid, signal);
    await Promise.race([child.exited, sleep(10_000)]);
    if (alive(pid)) process.kill(pid, 'SIGKILL');
    await child.exited;
  };
  t.teardown(() => end('SIGKILL'));
  return { uri, address, pid, output: child.output, kill: () => end('SIGKILL'), stop: () => end('SIGTERM') };
}

/** nbdkit in the foreground on a Unix socket under `dir` (or 127.0.0.1). */
export async function startNbdkit(t: ExecutionContext, dir: string, options: NbdkitOptions = {}): Promise<NbdServer> {
  const { argv, uri, address, listening } = nbdkitCommand(dir, options);
  return serve(t, argv, uri, address, listening);
}

/** qemu-nbd serving `image` (its format probed, so qcow2 works) on a socket under `dir`. */
export async function startQemuNbd(t: ExecutionContext, dir: string, image: string, format = 'qcow2'): Promise<NbdServer> {
  const socket = join(dir, `qemu-nbd-${counter++}.sock`);
  const argv = ['qemu-nbd', '--persistent', '--shared=4', '--cache=none', '-f', format, '--socket', socket, image];
  return serve(t, argv, `nbd+unix:///?socket=${socket}`, socket, () => existsSync(socket));
}

/** The bytes [offset, offset + length) the server holds, read by qemu-img (no export involved). */
export async function serverBytes(server: NbdServer, dir: string, length: number): Promise<Buffer> {
  const out = join(dir, `server-copy-${counter++}.raw`);
  const result = await run(['qemu-img', 'convert', '-f', 'raw', '-O', 'raw', server.uri, out], { timeout: 60_000 });
  if (result.code !== 0) throw new Error(`qemu-img convert from ${server.uri} failed: ${result.stderr}`);
  return readFileSync(out).subarray(0, length);
}
