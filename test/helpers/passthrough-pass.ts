// The suite's passthrough pass. `npm test` runs the end-to-end specs twice:
// once with the helpers' exports on the FUSE path (--passthrough off), once
// with FUSE_EXPORT_TEST_PASSTHROUGH=auto, where every export the helpers
// start whose test names no --passthrough gets `auto`. Not `on`: `on`
// refuses the exports passthrough cannot serve within the contract
// (fixed-size writable, probed raw, qcow2, NBD), and those must run on the
// normal path in that pass. Only the tests read this variable.
import type { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import type { ImageFormat, Switch } from 'fuse-export';

const PASS_VARIABLE = 'FUSE_EXPORT_TEST_PASSTHROUGH';

function passFromEnvironment(): Switch {
  const value = process.env[PASS_VARIABLE] ?? 'off';
  if (value !== 'on' && value !== 'off' && value !== 'auto') {
    throw new Error(`${PASS_VARIABLE} must be on, off or auto, not "${value}"`);
  }
  return value;
}

/** The --passthrough of every export whose test does not name one. */
export const DEFAULT_PASSTHROUGH: Switch = passFromEnvironment();

/** What the pass needs to know of an export: how it was asked for, and what it is. */
export interface PassExport {
  passthrough?: Switch;
  format?: ImageFormat;
  writable?: boolean;
  growable?: boolean;
  /** The exporter runs as root (CAP_SYS_ADMIN). */
  root: boolean;
}

/** Whether the test left passthrough to the pass, in a pass that turns it on. */
function leftToPass({ passthrough }: PassExport): boolean {
  return passthrough === undefined && DEFAULT_PASSTHROUGH !== 'off';
}

/**
 * Whether the contract lets the kernel serve the export's data itself
 * (README, --passthrough): as root, a raw image file (the kernel passes
 * through to regular files only) exported read-only, or growable with its
 * format named raw (a fixed-size one must refuse writes past its end, a
 * probed one writes that plant a qcow2 header).
 */
function contractAllows(image: string, raw: boolean, { format, writable, growable, root }: PassExport): boolean {
  if (!root || !raw || !statSync(image).isFile()) return false;
  return !writable || (growable === true && format === 'raw');
}

/**
 * The --format an export gets: `raw` where the test named none, the image
 * on disk is raw and naming it is all passthrough lacks (a growable
 * export), so that the pass serves those through the kernel too.
 */
export function formatOfPass(image: string, asked: PassExport): ImageFormat | undefined {
  if (asked.format !== undefined || !leftToPass(asked) || !existsSync(image)) return asked.format;
  const raw = formatOnDisk(image) === 'raw';
  return raw && contractAllows(image, raw, { ...asked, format: 'raw' }) ? 'raw' : undefined;
}

/** The format QEMU's probe finds in an image file (a VMDK is no raw image to pass through). */
function formatOnDisk(image: string): string {
  const info = execFileSync('qemu-img', ['info', '--output=json', '-U', image], { encoding: 'utf8' });
  return (JSON.parse(info) as { format: string }).format;
}

/** What an export reported when it became ready (the ready event, or the API's info). */
export interface ReadyPassthrough {
  image: string;
  format: string;
  backend: string;
  passthrough: boolean;
}

/**
 * In the passthrough pass, an export the test left to the pass must use
 * passthrough exactly where the contract allows it: a pass that silently
 * fell back to the FUSE path would prove nothing.
 */
export function assertPassthroughOfPass(t: ExecutionContext, ready: ReadyPassthrough, asked: PassExport, reason: unknown): void {
  if (!leftToPass(asked)) return;
  const raw = ready.backend === 'file' && ready.format === 'raw';
  const expected = contractAllows(ready.image, raw, asked);
  t.is(ready.passthrough, expected, `${PASS_VARIABLE}=${DEFAULT_PASSTHROUGH}: passthrough ${expected ? 'expected' : 'not expected'} (${reason})`);
}
