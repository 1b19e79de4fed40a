// One export's life in JavaScript: starting → serving → draining → stopped,
// or → halted → stopped. The Rust core serves every request; this class
// decides when to drain, halt and let go, and holds the references.
import { EventEmitter } from 'node:events';
import { resolve } from 'node:path';
import { native, type NativeEvent, type NativeExport, type NativeOptions } from '../native.js';
import { resolveOptions, type ExportOptions, type ResolvedOptions, type StartHooks } from '../options.js';
import { claimMountpoint, prepareMountpoint, releaseMountpoint, SetupError } from './mountpoint.js';
import { References } from './references.js';
import { StateMachine, type ExportState } from './state.js';

export type { ExportState } from './state.js';
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

/** What the life cycle needs from the Rust core (a fake one in unit tests). */
export interface Core {
  startExport(options: NativeOptions, onEvent: (event: NativeEvent) => void): Promise<CoreExport>;
  detachMount(path: string): void;
}
export type CoreExport = Pick<NativeExport, 'info' | 'stats' | 'pause' | 'resume' | 'halt' | 'unmount' | 'abort' | 'stop'>;

const DRAIN_POLL_MS = 2;
/** How long the I/O threads get to finish once told to stop. */
const STOP_GRACE_MS = 2000;
const OWNER = 'owner';
const CONNECTION = 'connection';

/** A running export. Create it with `FuseExport.start()`. */
export class FuseExport extends EventEmitter<FuseExportEvents> {
  readonly options: ResolvedOptions;
  readonly info: ExportInfo;
  readonly #core: CoreExport;
  readonly #machine = new StateMachine((from, to) => this.emit('state', { from, to }));
  readonly #references: References;
  readonly #dropOwner: () => void;
  readonly #dropConnection: () => void;
  readonly #released: Promise<void>;
  #stopping: Promise<StoppedEvent> | undefined;
  #haltReason: string | undefined;
  #aborted = false;
  #lastStats: ExportStats = { legacyRequests: 0, ringRequests: 0, bytesRead: 0, bytesWritten: 0, errors: 0, inFlight: 0 };

  private constructor(options: ResolvedOptions, info: ExportInfo, core: CoreExport) {
    super();
    this.options = options;
    this.info = info;
    this.#core = core;
    let release!: () => void;
    this.#released = new Promise((r) => (release = r));
    this.#references = new References(release);
    this.#dropOwner = this.#references.take(OWNER);
    this.#dropConnection = this.#references.take(CONNECTION);
  }

  /** Mounts and serves; resolves when the kernel talks to the export. */
  static async start(options: ExportOptions, hooks: StartHooks = {}, core: Core = native()): Promise<FuseExport> {
    const resolved = resolveOptions(options);
    resolved.image = resolve(resolved.image);
    const warnings: ExportWarning[] = [];
    const warn = (warning: ExportWarning) => (hooks.onWarning ? hooks.onWarning(warning) : warnings.push(warning));
    const mountpoint = await prepareMountpoint(resolved.mountpoint, {
      detach: (path) => core.detachMount(path),
      warn: (message, fields) => warn({ message, ...fields }),
    });
    claimMountpoint(mountpoint);
    let exp: FuseExport | undefined;
    const early: NativeEvent[] = [];
    const onEvent = (event: NativeEvent) => (exp ? exp.#onCoreEvent(event) : early.push(event));
    let handle: CoreExport;
    try {
      handle = await core.startExport(
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
    for (const message of info.warnings) warn({ message });
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
      handle,
    );
    exp.#machine.move('serving');
    // Emitted once the caller could subscribe.
    const started = exp;
    setImmediate(() => {
      for (const warning of warnings) started.emit('warning', warning);
      for (const event of early) started.#onCoreEvent(event);
    });
    return exp;
  }

  get state(): ExportState {
    return this.#machine.state;
  }

  get transport(): Transport {
    return this.info.transport;
  }

  /** Counters of the Rust core; the last values once stopped. */
  stats(): ExportStats {
    if (!this.#machine.is('stopped')) this.#lastStats = this.#core.stats();
    return { ...this.#lastStats };
  }

  /**
   * Takes a reference: the export's memory is released only when every
   * holder let go. Returns the function that drops it.
   */
  ref(holder: string): () => void {
    return this.#references.take(holder);
  }

  /** Who holds the export right now. */
  holders(): string[] {
    return this.#references.holders();
  }

  /**
   * Drains (no new requests; in-flight ones finish within the shutdown
   * timeout), unmounts, and releases the export once no reference is left.
   * Safe to call more than once: every call gets the same result.
   */
  stop(reason: StopReason = 'api'): Promise<StoppedEvent> {
    this.#stopping ??= this.#shutdown(reason);
    return this.#stopping;
  }

  /**
   * Ends the connection from the kernel's side at once: callers waiting on
   * the file get ENOTCONN. For a second signal, or a drain that never ends.
   */
  abort(): void {
    if (this.#aborted || this.#machine.is('stopped')) return;
    this.#aborted = true;
    try {
      this.#core.abort();
    } catch (error) {
      this.emit('warning', { message: (error as Error).message, event: 'abort-failed' });
    }
  }

  /** Stops taking requests for good (the reason is reported), then stops. */
  halt(reason: string): Promise<StoppedEvent> {
    this.#core.halt(reason);
    return this.stop('halted');
  }

  #onCoreEvent(event: NativeEvent): void {
    if (event.kind === 'halted') {
      const reason = event.reason ?? 'unknown';
      this.#haltReason = reason;
      this.#machine.move('halted');
      this.emit('halted', { reason });
      void this.stop('halted');
    } else if (event.kind === 'disconnected') {
      this.#dropConnection();
      void this.stop('unmounted');
    } else if (event.kind === 'warning') {
      this.emit('warning', { message: event.reason ?? '', event: event.name ?? undefined });
    }
  }

  async #shutdown(reason: StopReason): Promise<StoppedEvent> {
    this.#machine.move('draining');
    this.#core.pause();
    const abandoned = await this.#drain();
    if (abandoned > 0 && !this.#aborted) {
      this.emit('warning', {
        message: `${abandoned} request(s) still in flight after ${this.options.shutdownTimeout} ms; aborting the connection`,
        event: 'drain-timeout',
        abandoned,
      });
      this.abort();
    }
    try {
      this.#core.unmount();
    } catch (error) {
      this.emit('warning', { message: (error as Error).message, event: 'unmount-failed' });
    }
    this.#dropConnection();
    this.#dropOwner();
    await this.#released;
    this.stats();
    await this.#core.stop(STOP_GRACE_MS);
    releaseMountpoint(this.info.mountpoint);
    this.#machine.move('stopped');
    const stopped: StoppedEvent = { ...this.#lastStats, reason: this.#haltReason ? 'halted' : reason, abandoned };
    this.emit('stopped', stopped);
    return stopped;
  }

  /** Waits until no request is in flight, the timeout passes, or an abort. */
  async #drain(): Promise<number> {
    const deadline = Date.now() + this.options.shutdownTimeout;
    for (;;) {
      const { inFlight } = this.#core.stats();
      if (inFlight === 0 || this.#aborted || Date.now() >= deadline) return inFlight;
      await new Promise((r) => setTimeout(r, DRAIN_POLL_MS));
    }
  }
}
