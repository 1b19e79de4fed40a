// The command line's unknown-option check, which runs before yargs: what
// counts as one of ours (names, camelCase, --no-*, -q), and what is a value.
import test from 'ava';
import { unknownOption } from '../../ts/cli/args.js';

test('options of ours, their values and the positionals pass', (t) => {
  for (const argv of [
    ['img', 'mnt'],
    ['--writable', '--growable', 'img', 'mnt'],
    ['--no-writable', '--allowOther', 'on', '--io-uring=off', 'img', 'mnt'],
    ['--threads', '-1', '--pidfile', 'pid', 'img', 'mnt'],
    ['-q', '-h', '--version', 'img', 'mnt'],
    ['img', 'mnt', '--', '--not-an-option'],
  ]) {
    t.is(unknownOption(argv), undefined, argv.join(' '));
  }
});

test('the first unknown option is named, long or short, with or without a value', (t) => {
  t.is(unknownOption(['--bogus', 'img', 'mnt']), '--bogus');
  t.is(unknownOption(['--writable', '--bogus-option=1', 'img', 'mnt']), '--bogus-option');
  t.is(unknownOption(['-x', 'img', 'mnt']), '-x');
  t.is(unknownOption(['-qz', 'img', 'mnt']), '-z');
  t.is(unknownOption(['--no-threads', 'img', 'mnt']), '--no-threads', '--no- only for the switches');
  t.is(unknownOption(['img', '--bogus', 'mnt']), '--bogus', 'between positionals too');
});
