// `--object secret,id=ID,data=...|file=PATH`: the keys of encrypted images,
// which an export takes as a file (--key-file). A secret given as data is
// written to a file of its own in a private directory (0700, the file
// 0600), removed when the daemon ends.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DaemonConfigError, type SecretSpec } from './config.js';

export class SecretFiles {
  readonly #specs = new Map<string, SecretSpec>();
  readonly #written = new Map<string, string>();
  #dir: string | undefined;

  constructor(specs: readonly SecretSpec[]) {
    for (const spec of specs) this.#specs.set(spec.id, spec);
  }

  /** The file holding secret `id`. */
  fileOf(id: string): string {
    const spec = this.#specs.get(id);
    if (!spec) throw new DaemonConfigError(`No secret with id '${id}'`);
    if ('file' in spec) return spec.file;
    const known = this.#written.get(id);
    if (known !== undefined) return known;
    this.#dir ??= mkdtempSync(join(tmpdir(), 'fuse-export-secrets-'));
    const path = join(this.#dir, String(this.#written.size));
    writeFileSync(path, spec.data, { mode: 0o600 });
    this.#written.set(id, path);
    return path;
  }

  remove(): void {
    if (this.#dir !== undefined) rmSync(this.#dir, { recursive: true, force: true });
    this.#dir = undefined;
    this.#written.clear();
  }
}
