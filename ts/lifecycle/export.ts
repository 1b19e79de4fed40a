// One export's life in JavaScript: starting → serving → draining → stopped,
// or → halted. The Rust core serves every request; this class decides when
// to drain, halt and let go.
import { EventEmitter } from 'node:events';
import { native, type NativeEvent, type NativeExport } from '../native.js';
import { resolve } from 'node:path';
import { resolveOptions, type ExportOptions, type ResolvedOptions } from '../options.js';
import { claimMountpoint, prepareMountpoint, releaseMountpoint, SetupError } from './mountpoint.js';

export type ExportState = 'starting' | 'serving' | 'draining' | 'stopped' | 'halted';
export type Transport = 'io_uring' | 'legacy';
export type StopReason = 'api' | 'signal' | 'unmounted' | 'halted' | (string & {});

export interface ExportStats {
  legacyRequests: number;
  ringRequests: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
  inFlight: number;
}

export interface ExportInfo {
  mountpoint: string;
  image: string;
  size: number;
  writable: boolean;
  growable: boolean;
  transport: Transport;
  /** Why this transport: the kernel's offer, the switch, a fallback. */
  transportReason: string;
  threads: number;
  ringQueues: number;
  queueDepth: number;
  allowOther: boolean;
  directIo: boolean;
}

export interface StoppedEvent extends ExportStats {
  reason: StopReason;
  /** Requests still in flight when the drain gave up (0 after a clean drain). */
  abandoned: number;
}

/** Something worth a warning line; `event` names it for scripts. */
export interface ExportWarning {
  message: string;
  event?: string;
  [field: string]: unknown;
}

export interface FuseExportEvents {
  state: [{ from: ExportState; to: ExportState }];
  warning: [ExportWarning];
  halted: [{ reason: string }];
  stopped: [StoppedEvent];
}

const DRAIN_POLL_MS = 2;

/** A running export. Create it with `FuseExport.start()`. */
export class FuseExport extends EventEmitter<FuseExportEvents> {
  #state: ExportState = 'starting';
  #native: NativeExport | undefined;
  #stopping: Promise<StoppedEvent> | undefined;
  #haltReason: string | undefined;
  readonly options: ResolvedOptions;
  readonly info: ExportInfo;

  private constructor(options: ResolvedOptions, info: ExportInfo) {
    super();
    this.options = options;
    this.info = info;
  }

  /** Mounts and serves; resolves when the kernel talks to the export. */
  static async start(options: ExportOptions): Promise<FuseExport> {
    const resolved = resolveOptions(options);
    resolved.image = resolve(resolved.image);
    const binding = native();
    const warnings: ExportWarning[] = [];
    const mountpoint = await prepareMountpoint(resolved.mountpoint, {
      detach: (path) => binding.detachMount(path),
      warn: (message, fields) => warnings.push({ message, ...fields }),
    });
    claimMountpoint(mountpoint);
    let exp: FuseExport | undefined;
    const early: NativeEvent[] = [];
    const onEvent = (event: NativeEvent) => (exp ? exp.#onNativeEvent(event) : early.push(event));
    let handle: NativeExport;
    try {
      handle = await binding.startExport(
        {
          image: resolved.image,
          mountpoint,
          writable: resolved.writable,
          growable: resolved.growable,
          allowOther: resolved.allowOther,
          ioUring: resolved.ioUring,
          threads: resolved.threads,
          queueDepth: resolved.queueDepth,
          cache: resolved.cache,
        },
        onEvent,
      );
    } catch (error) {
      releaseMountpoint(mountpoint);
      throw new SetupError((error as Error).message);
    }
    const info = handle.info();
    exp = new FuseExport(
      { ...resolved, mountpoint },
      {
        mountpoint,
        image: resolved.image,
        size: info.size,
        writable: resolved.writable,
        growable: resolved.growable,
        transport: info.transport as Transport,
        transportReason: info.transportReason,
        threads: info.threads,
        ringQueues: info.ringQueues,
        queueDepth: info.queueDepth,
        allowOther: info.allowOther,
        directIo: info.directIo,
      },
    );
    exp.#native = handle;
    exp.#setState('serving');
    // Warnings are emitted once the caller could subscribe.
    setImmediate(() => {
      for (const warning of warnings) exp.emit('warning', warning);
      for (const message of info.warnings) exp.emit('warning', { message });
      for (const event of early) exp.#onNativeEvent(event);
    });
    return exp;
  }

  get state(): ExportState {
    return this.#state;
  }

  get transport(): Transport {
    return this.info.transport;
  }

  /** Counters of the Rust core; the last values once stopped. */
  stats(): ExportStats {
    return this.#lastStats = this.#native ? this.#native.stats() : this.#lastStats;
  }

  #lastStats: ExportStats = { legacyRequests: 0, ringRequests: 0, bytesRead: 0, bytesWritten: 0, errors: 0, inFlight: 0 };

  /**
   * Drains (no new requests; in-flight ones finish), unmounts and releases
   * the export. Safe to call more than once: every call gets the same result.
   */
  stop(reason: StopReason = 'api'): Promise<StoppedEvent> {
    this.#stopping ??= this.#shutdown(reason);
    return this.#stopping;
  }

  #setState(to: ExportState): void {
    const from = this.#state;
    if (from === to) return;
    this.#state = to;
    this.emit('state', { from, to });
  }

  #onNativeEvent(event: NativeEvent): void {
    if (event.kind === 'halted') {
      const reason = event.reason ?? 'unknown';
      this.#haltReason = reason;
      this.#setState('halted');
      this.emit('halted', { reason });
      void this.stop('halted');
    } else if (event.kind === 'unmounted') {
      void this.stop('unmounted');
    } else if (event.kind === 'warning') {
      this.emit('warning', { message: event.reason ?? '' });
    }
  }

  async #shutdown(reason: StopReason): Promise<StoppedEvent> {
    const handle = this.#native!;
    if (this.#state === 'serving') this.#setState('draining');
    handle.pause();
    const abandoned = await this.#drain(handle);
    try {
      handle.unmount();
    } catch (error) {
      this.emit('warning', { message: (error as Error).message, event: 'unmount-failed' });
    }
    this.stats();
    await handle.stop();
    this.#native = undefined;
    releaseMountpoint(this.info.mountpoint);
    if (this.#state !== 'halted') this.#setState('stopped');
    const stopped: StoppedEvent = { reason: this.#haltReason ? 'halted' : reason, ...this.#lastStats, abandoned };
    this.emit('stopped', stopped);
    return stopped;
  }

  /** Waits until no request is in flight, or the shutdown timeout passes. */
  async #drain(handle: NativeExport): Promise<number> {
    const deadline = Date.now() + this.options.shutdownTimeout;
    for (;;) {
      const inFlight = handle.stats().inFlight;
      if (inFlight === 0) return 0;
      if (Date.now() >= deadline) return inFlight;
      await new Promise((r) => setTimeout(r, DRAIN_POLL_MS));
    }
  }
}
