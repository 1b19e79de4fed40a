// The usual test set-up in one call: a temporary directory, an image, an
// empty mountpoint file, and the export serving it through the CLI.
import type { ExecutionContext } from 'ava';
import { exportImage, type ExportImageOptions, type ReadyExport } from './cli.js';
import { type Extent, makeImage, makeMountpoint, MiB, tmpDir } from './files.js';

/**
 * { dir, image, mnt, exp }: `size` and `extents` shape the image (sparse
 * elsewhere), `under` picks its file system; every other option goes to
 * exportImage (ioUring 'off' unless given).
 */
export async function exported(
  t: ExecutionContext,
  {
    size = 4 * MiB,
    extents = [],
    under,
    ...options
  }: Omit<ExportImageOptions, 'image' | 'mountpoint'> & { size?: number; extents?: Extent[]; under?: string } = {},
): Promise<{ dir: string; image: string; mnt: string; exp: ReadyExport }> {
  const dir = tmpDir(t, { under });
  const image = makeImage(dir, 'disk.img', size, extents);
  const mnt = makeMountpoint(dir);
  const exp = await exportImage(t, { image, mountpoint: mnt, ...options });
  return { dir, image, mnt, exp };
}
