// Busy-polling is off unless asked for: it costs deep I/O its batching.
import test from 'ava';
import { OptionError, resolveOptions } from '../../ts/options.js';

test('busy-polling: off by default, an explicit value kept', (t) => {
  t.is(resolveOptions({ image: 'disk.img', mountpoint: 'm' }).pollMaxUs, 0);
  t.is(resolveOptions({ image: 'nbd://server/export', mountpoint: 'm' }).pollMaxUs, 0);
  t.is(resolveOptions({ image: 'disk.img', mountpoint: 'm', pollMaxUs: 250 }).pollMaxUs, 250);
});

test('busy-polling: a negative, fractional or huge value names the option', (t) => {
  for (const pollMaxUs of [-1, 2.5, 20_000]) {
    t.throws(() => resolveOptions({ image: 'disk.img', mountpoint: 'm', pollMaxUs }), {
      instanceOf: OptionError,
      message: /poll-max-us must be a whole number from 0 to 10000/,
    });
  }
});
