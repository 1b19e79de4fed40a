// Loading the native core: where no binary fits, the error says what is
// supported and why, instead of a bare "cannot find module".
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const API = fileURLToPath(new URL('../../dist/index.js', import.meta.url));

function startIn(setup: string, env: NodeJS.ProcessEnv = {}): string {
  const script = `${setup}; const { FuseExport } = await import(${JSON.stringify(API)});
    await FuseExport.start({ image: '/etc/hostname', mountpoint: '/etc/hostname' }).then(
      () => console.log('started'), (e) => console.log(e.message));`;
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 20_000,
    env: { ...process.env, ...env },
  });
  return result.stdout.trim();
}

test('a Linux machine without a fitting binary is told which exist and how to get one', (t) => {
  const message = startIn('', { NAPI_RS_NATIVE_LIBRARY_PATH: '/nonexistent/fuse-export.node' });
  t.regex(message, /no native binary for linux-/);
  t.regex(message, /linux-x64-gnu, linux-arm64-gnu, linux-x64-musl, linux-arm64-musl/);
  t.regex(message, /build from source with Rust/);
});

test('another operating system is told that FUSE export is Linux only', (t) => {
  const message = startIn("Object.defineProperty(process, 'platform', { value: 'darwin' })");
  t.regex(message, /runs on Linux only \(it needs the kernel's FUSE\); this is darwin-/);
});
