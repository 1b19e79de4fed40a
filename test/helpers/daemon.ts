// fuse-export-storage-daemon for the tests: started like qemu-storage-daemon
// (its own command line), stopped with SIGTERM, with the QMP client of
// qmp.mjs on its monitor socket.
import type { ExecutionContext } from 'ava';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCli, type CliExport, type CliStartOptions } from './cli.js';
import { assertUnmounted } from './mounts.js';
import type { Argv } from './proc.js';
import { QmpTestClient } from './qmp.mjs';

export const DAEMON = fileURLToPath(new URL('../../dist/daemon/main.js', import.meta.url));

/** The daemon with `args`, serving once its `serving` line is out; stopped at the test's end if still running. */
export async function startDaemon(t: ExecutionContext, args: Argv, options: CliStartOptions = {}): Promise<CliExport> {
  const daemon = startCli(t, args, { ...options, command: [process.execPath, DAEMON] });
  await daemon.event('serving');
  return daemon;
}

/** `--chardev` and `--monitor` arguments for a QMP socket in `dir`, and its path. */
export function qmpSocket(dir: string): { args: string[]; path: string } {
  const path = join(dir, 'qmp.sock');
  return { args: ['--chardev', `socket,id=qmp0,path=${path},server=on,wait=off`, '--monitor', 'chardev=qmp0'], path };
}

/** A negotiated QMP client on `path`, closed at the test's end. */
export async function qmpClient(t: ExecutionContext, path: string): Promise<QmpTestClient> {
  const { client } = await QmpTestClient.connect(path);
  t.teardown(() => client.close());
  await client.negotiate();
  return client;
}

/** SIGTERM: every export drains and unmounts, exit 0. */
export async function stopDaemon(t: ExecutionContext, daemon: CliExport, mountpoints: string[]): Promise<void> {
  daemon.signal('SIGTERM');
  const { code } = await daemon.wait();
  t.is(code, 0, `exit status after SIGTERM:\n${daemon.stderr()}`);
  for (const mountpoint of mountpoints) assertUnmounted(t, mountpoint);
}
