// qcow2 images for the tests: made with qemu-img, filled with qemu-io,
// checked with qemu-img check / compare / convert.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { check, qemuIo, run, type RunResult } from './proc.js';

/** `qemu-img create -f qcow2 [-b backing -F format] [-o options] path size`. */
export async function makeQcow2(
  dir: string,
  name: string,
  size: number | string,
  { backing, backingFormat = 'qcow2', options }: { backing?: string; backingFormat?: string; options?: string } = {},
): Promise<string> {
  const path = join(dir, name);
  const argv = ['qemu-img', 'create', '-q', '-f', 'qcow2'];
  if (backing !== undefined) argv.push('-b', backing, '-F', backingFormat);
  if (options !== undefined) argv.push('-o', options);
  await check([...argv, path, String(size)]);
  return path;
}

/** Runs qemu-io commands (`write -P 0x11 0 64k`, `write -c ...`) on an image; throws on failure. */
export async function qemuWrite(path: string, commands: string[], format = 'qcow2'): Promise<void> {
  const result = await qemuIo(path, commands, { format });
  if (!result.ok) throw new Error(`qemu-io ${commands.join('; ')} on ${path}: ${result.out}`);
}

/** `qemu-img convert -O raw` of `image` into `dir/name`: the guest's view of it. */
export async function toRaw(image: string, dir: string, name = 'reference.raw'): Promise<string> {
  const out = join(dir, name);
  await check(['qemu-img', 'convert', '-O', 'raw', image, out]);
  return out;
}

/** `qemu-img check` of an image: { code, out } (0 clean, 2 corrupt, 3 leaks). */
export async function qemuCheck(image: string): Promise<RunResult & { out: string }> {
  const result = await run(['qemu-img', 'check', image]);
  return { ...result, out: result.stdout + result.stderr };
}

/** `qemu-img compare` of a qcow2 against a raw file: exit 0 when the guest sees the same. */
export async function qemuCompare(image: string, raw: string): Promise<RunResult & { out: string }> {
  const result = await run(['qemu-img', 'compare', '-F', 'raw', image, raw]);
  return { ...result, out: result.stdout + result.stderr };
}

/** `qemu-img info --output=json`. */
export async function qemuInfo(image: string): Promise<{ 'virtual-size': number; [field: string]: unknown }> {
  return JSON.parse((await check(['qemu-img', 'info', '-U', '--output=json', image])).stdout);
}

/** `qemu-img map --output=json`: the guest ranges and whether they hold data. */
export async function qemuMap(image: string): Promise<{ start: number; length: number; data: boolean; zero: boolean }[]> {
  return JSON.parse((await check(['qemu-img', 'map', '-U', '--output=json', image])).stdout);
}

/** sha256 of a whole file, to prove it unchanged. */
export function digest(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}
