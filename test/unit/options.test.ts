// Option defaults that depend on the image: busy-polling is off for NBD
// images unless asked for (a polling thread takes CPU a local server needs).
import test from 'ava';
import { OptionError, resolveOptions } from '../../ts/options.js';

test('busy-polling: 250 µs for a file, none for an NBD image, an explicit value kept', (t) => {
  t.is(resolveOptions({ image: 'disk.img', mountpoint: 'm' }).pollMaxUs, 250);
  t.is(resolveOptions({ image: 'nbd+unix:///?socket=/tmp/s', mountpoint: 'm' }).pollMaxUs, 0);
  t.is(resolveOptions({ image: 'nbd://server/export', mountpoint: 'm', pollMaxUs: 100 }).pollMaxUs, 100);
  t.is(resolveOptions({ image: 'disk.img', mountpoint: 'm', pollMaxUs: 0 }).pollMaxUs, 0);
});

test('busy-polling: a negative, fractional or huge value names the option', (t) => {
  for (const pollMaxUs of [-1, 2.5, 20_000]) {
    t.throws(() => resolveOptions({ image: 'disk.img', mountpoint: 'm', pollMaxUs }), {
      instanceOf: OptionError,
      message: /poll-max-us must be a whole number from 0 to 10000/,
    });
  }
});
