// What `fsop.py acked_writes` acknowledged, checked against the image.
import { readFile } from './files.js';

/** Indexes of blocks the writer reported acknowledged (written and fsynced). */
export function ackedBlocks(output: string): number[] {
  return [...output.matchAll(/"acked": (\d+)/g)].map((m) => Number(m[1]));
}

/** The acknowledged blocks that are not in the image (block i is filled with i % 251 + 1). */
export function lostBlocks(image: string, output: string, block: number, count: number): number[] {
  const bytes = readFile(image, 0, block * count);
  return ackedBlocks(output).filter(
    (i) => !bytes.subarray(i * block, (i + 1) * block).equals(Buffer.alloc(block, (i % 251) + 1)),
  );
}
