// fio for the tests. A verify job that ends in its write phase (a time
// limit, an export stopped under it) saves its state by default, as
// local-<job>-<n>-verify.state in fio's working directory: the repository
// when `npm test` runs. No test replays it, so none is saved.
import { run, type Argv, type RunOptions, type RunResult } from './proc.js';

/** `fio --verify_state_save=0 ...args`, as run() runs it. */
export function fio(args: Argv, options?: RunOptions): Promise<RunResult> {
  return run(['fio', '--verify_state_save=0', ...args], options);
}
