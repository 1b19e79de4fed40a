// The napi-rs binding. Its generated loader is CommonJS; it picks the
// binary for this platform (a local build, or the per-platform package).
import { createRequire } from 'node:module';
import type * as Native from '../native/index.cjs';

const require = createRequire(import.meta.url);

export type NativeExport = Native.NativeExport;
export type NativeEvent = Native.NativeEvent;
export type NativeOptions = Native.NativeOptions;
export type NativeStats = Native.NativeStats;
export type NativeLatency = Native.NativeLatency;

let binding: typeof Native | undefined;

const SUPPORTED = ['linux-x64-gnu', 'linux-arm64-gnu', 'linux-x64-musl', 'linux-arm64-musl'];

/** Loads the binding on first use, so that `--help` works without it. */
export function native(): typeof Native {
  if (binding === undefined) {
    if (process.platform !== 'linux') {
      throw new Error(
        `fuse-export runs on Linux only (it needs the kernel's FUSE); this is ${process.platform}-${process.arch}`,
      );
    }
    try {
      binding = require('../native/index.cjs') as typeof Native;
    } catch (error) {
      throw new Error(
        `fuse-export has no native binary for linux-${process.arch} here. Prebuilt binaries exist for ` +
          `${SUPPORTED.join(', ')}: reinstall without --omit=optional, or build from source with Rust ` +
          `(npm run build:native). Cause: ${(error as Error).message.split('\n')[0]}`,
      );
    }
  }
  return binding;
}
