// Progress lines on stderr, stamped with the time since the start.
const t0 = Date.now();

function elapsed() {
  const s = Math.round((Date.now() - t0) / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

export const say = (message) => process.stderr.write(`[bench ${elapsed()}] ${message}\n`);
