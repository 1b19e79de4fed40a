// The pidfile: written when the export is ready, removed at exit. Written
// through a fresh temporary file and a rename, so that a symlink planted at
// the path is replaced, never followed to clobber another file.
import { renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';

export function writePidfile(path: string): void {
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, `${process.pid}\n`, { flag: 'wx', mode: 0o644 });
  try {
    renameSync(temporary, path);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw error;
  }
}

export function removePidfile(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // Already gone: nothing to clean up.
  }
}
