// A fake Rust core for the unit tests of the life cycle and the daemon,
// and a scratch place to export to. No kernel involved.
import type { ExecutionContext } from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExportOptions } from 'fuse-export';
// The real interface between the life cycle and the Rust core: the fake
// below must satisfy it, so a change of the core's interface breaks the
// type check of the unit tests.
import type { Core, CoreExport } from '../../ts/lifecycle/export.js';
import type { NativeEvent } from '../../ts/native.js';

/**
 * A core that records the calls made to it and behaves as the Rust core
 * does: the connection ends ('disconnected', a moment later) after the
 * unmount, unless the file is still open somewhere (`busy`), and after an
 * abort, unless it fails (`abortError`). The test drives the rest.
 */
export interface FakeCore extends Core {
  calls: string[];
  inFlight: number;
  busy: boolean;
  abortError: string | undefined;
  /** What stop() resolves with: I/O threads still running. */
  threadsLeft: number;
  /** The waitMs each stop() was given. */
  stopWaits: number[];
  emit: (event: NativeEvent) => void;
}

export function fakeCore({ failStart }: { failStart?: string } = {}): FakeCore {
  const calls: string[] = [];
  const core: FakeCore = {
    calls,
    inFlight: 0,
    busy: false,
    abortError: undefined,
    threadsLeft: 0,
    stopWaits: [],
    emit: () => {
      throw new Error('the export was not started');
    },
    async startExport(_options, onEvent): Promise<CoreExport> {
      calls.push('start');
      if (failStart) throw new Error(failStart);
      core.emit = onEvent;
      // Each export's connection ends on its own events, however many run.
      const disconnectSoon = () => setImmediate(() => onEvent({ kind: 'disconnected' }));
      return {
        info: () => ({ format: 'raw', image: 'fake.img', backend: 'file', size: 4096, transport: 'legacy', transportReason: 'fake', threads: 1, ringQueues: 0, queueDepth: 64, allowOther: false, directIo: false, passthrough: false, passthroughReason: 'fake', warnings: [] }),
        stats: () => ({ legacyRequests: 7, ringRequests: 0, bytesRead: 1, bytesWritten: 2, errors: 0, inFlight: core.inFlight }),
        resize: (size) => void calls.push(`resize:${size}`),
        latencies: () => [],
        pause: () => void calls.push('pause'),
        halt: (reason) => {
          calls.push(`halt:${reason}`);
          onEvent({ kind: 'halted', reason });
        },
        unmount: () => {
          calls.push('unmount');
          if (!core.busy) disconnectSoon();
        },
        abort: () => {
          calls.push('abort');
          if (core.abortError !== undefined) throw new Error(core.abortError);
          disconnectSoon();
        },
        stop: async (waitMs) => {
          calls.push('stop');
          core.stopWaits.push(waitMs);
          return core.threadsLeft;
        },
      };
    },
    startIoThreads: (count, name) => {
      calls.push(`threads:${name}x${count}`);
      return { close: () => void calls.push(`close:${name}`) };
    },
    detachMount: (path) => void calls.push(`detach:${path}`),
  };
  return core;
}

/** An image path and an empty mountpoint file in a directory removed after the test. */
export function scratch(t: ExecutionContext): ExportOptions {
  const dir = mkdtempSync(join(tmpdir(), 'fuse-export-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const mountpoint = join(dir, 'mnt');
  writeFileSync(mountpoint, '');
  return { image: join(dir, 'img'), mountpoint, shutdownTimeout: 200 };
}
