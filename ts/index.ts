// The Node API: `import { FuseExport } from 'fuse-export'`.
export { FuseExport } from './lifecycle/export.js';
export type {
  ExportInfo,
  ExportState,
  ExportStats,
  ExportWarning,
  FuseExportEvents,
  StoppedEvent,
  StopReason,
  Transport,
} from './lifecycle/export.js';
export { SetupError } from './lifecycle/mountpoint.js';
export { StorageDaemon } from './daemon/daemon.js';
export type { ExportCounters, ExportSummary, StorageDaemonEvents, StorageDaemonOptions } from './daemon/daemon.js';
export type { BlockdevOptions, FuseExportSpec, IothreadSpec, SecretSpec } from './daemon/config.js';
export { DaemonConfigError } from './daemon/config.js';
export { OptionError, DEFAULTS } from './options.js';
export type { CacheMode, ExportOptions, ImageFormat, IoThreadSet, StartHooks, Switch } from './options.js';
