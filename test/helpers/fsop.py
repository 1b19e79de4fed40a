#!/usr/bin/python3
"""One file-system operation on a path, answered as one JSON line.

    fsop.py OP PATH [ARGS...]

Prints {"ok": RESULT} or {"errno": "ENAME", "message": "..."}. The tests run
it as a child process (with a timeout) so that I/O on a FUSE mount can never
freeze the test runner, and so that it can run as another user.
"""
import ctypes
import errno
import hashlib
import itertools
import json
import mmap
import os
import struct
import sys
import threading
import time
import zlib

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fallocate(fd, mode, offset, length):
    """fallocate(2), failing with OSError as the os module's calls do."""
    if libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def errname(number):
    """ENOTSUP and EOPNOTSUPP are one number on Linux: always say EOPNOTSUPP."""
    if number == errno.EOPNOTSUPP:
        return 'EOPNOTSUPP'
    return errno.errorcode.get(number, str(number))


OPEN_FLAGS = {
    'r': os.O_RDONLY,
    'w': os.O_WRONLY,
    'rw': os.O_RDWR,
    'trunc': os.O_WRONLY | os.O_TRUNC,
    'rwtrunc': os.O_RDWR | os.O_TRUNC,
    'direct': os.O_RDWR | os.O_DIRECT,
    'rdirect': os.O_RDONLY | os.O_DIRECT,
}


def open_(path, how='rw'):
    return os.open(path, OPEN_FLAGS[how])


def op_stat(path):
    st = os.stat(path)
    return {
        'mode': st.st_mode,
        'ino': st.st_ino,
        'nlink': st.st_nlink,
        'uid': st.st_uid,
        'gid': st.st_gid,
        'size': st.st_size,
        'blocks': st.st_blocks,
    }


def op_read(path, offset, length, how='r'):
    fd = open_(path, how)
    try:
        if how.endswith('direct'):
            buf = mmap.mmap(-1, int(length))
            n = os.preadv(fd, [buf], int(offset))
            return buf[:n].hex()
        return os.pread(fd, int(length), int(offset)).hex()
    finally:
        os.close(fd)


def op_write(path, offset, hexdata, how='rw', sync='0'):
    """Writes hex bytes, or stdin when hexdata is '-'; returns the count written."""
    data = sys.stdin.buffer.read() if hexdata == '-' else bytes.fromhex(hexdata)
    fd = open_(path, how)
    try:
        if how.endswith('direct'):
            buf = mmap.mmap(-1, len(data))
            buf[:] = data
            n = os.pwritev(fd, [buf], int(offset))
        else:
            n = os.pwrite(fd, data, int(offset))
        if sync == '1':
            os.fsync(fd)
        return n
    finally:
        os.close(fd)


def op_open(path, how='r'):
    os.close(open_(path, how))
    return True


def op_truncate(path, size):
    os.truncate(path, int(size))
    return True


def op_ftruncate(path, size):
    fd = open_(path, 'rw')
    try:
        os.ftruncate(fd, int(size))
        return True
    finally:
        os.close(fd)


def op_fallocate(path, mode, offset, length):
    fd = open_(path, 'rw')
    try:
        fallocate(fd, int(mode, 0), int(offset), int(length))
        return True
    finally:
        os.close(fd)


def op_lseek(path, offset, whence):
    fd = open_(path, 'r')
    try:
        return os.lseek(fd, int(offset), {'data': os.SEEK_DATA, 'hole': os.SEEK_HOLE}[whence])
    finally:
        os.close(fd)


def op_chmod(path, mode):
    os.chmod(path, int(mode, 8))
    return True


def op_chown(path, uid, gid):
    os.chown(path, int(uid), int(gid))
    return True


def op_utime(path, seconds):
    os.utime(path, (int(seconds), int(seconds)))
    return True


def op_getxattr(path, name):
    return os.getxattr(path, name).hex()


def op_setxattr(path, name, value):
    os.setxattr(path, name, value.encode())
    return True


def op_listxattr(path):
    return os.listxattr(path)


def op_fsync(path, hexdata):
    """Writes at 0, fsyncs, fdatasyncs, closes (FLUSH): each must succeed."""
    fd = open_(path, 'rw')
    os.pwrite(fd, bytes.fromhex(hexdata), 0)
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    return True


def op_mmapwrite(path, offset, hexdata):
    """Writes through a MAP_SHARED mapping, msyncs, unmaps and closes."""
    data = bytes.fromhex(hexdata)
    fd = open_(path, 'rw')
    try:
        size = os.fstat(fd).st_size
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        before = m[int(offset):int(offset) + len(data)].hex()
        m[int(offset):int(offset) + len(data)] = data
        m.flush()
        m.close()
        return before
    finally:
        os.close(fd)


def timed(call):
    """Runs call(): (None or the errno's name, milliseconds it took)."""
    start = time.monotonic()
    try:
        call()
        outcome = None
    except OSError as e:
        outcome = errname(e.errno)
    return outcome, round((time.monotonic() - start) * 1000, 1)


def op_reads_through(path, seconds):
    """Reads 4 KiB blocks on one descriptor (O_DIRECT) for `seconds`, or until
    the connection is gone (ENOTCONN); prints {"failing": ERRNO} at the first
    failure. Returns the calls, the slowest call's milliseconds and the count
    of each errno."""
    fd = open_(path, 'rdirect')
    buf = mmap.mmap(-1, 4096)
    blocks = max(os.fstat(fd).st_size // 4096, 1)
    end = time.monotonic() + float(seconds)
    calls, slowest, errnos = 0, 0.0, {}
    while time.monotonic() < end:
        outcome, took = timed(lambda: os.preadv(fd, [buf], (calls % blocks) * 4096))
        calls += 1
        slowest = max(slowest, took)
        if outcome:
            if not errnos:
                print(json.dumps({'failing': outcome}), flush=True)
            errnos[outcome] = errnos.get(outcome, 0) + 1
            if outcome == 'ENOTCONN':
                break
            time.sleep(0.001)
    timed(lambda: os.close(fd))
    return {'calls': calls, 'slowest_ms': slowest, 'errnos': errnos}


def op_hold(path, trigger, calls):
    """Opens `path`, writes a block, prints "opened" and holds it until the
    file `trigger` exists (60 s at most); then makes the comma-separated
    `calls` on the descriptor (statfs, read, fsync, close), each answered as
    [call, errno or null, milliseconds]."""
    fd = open_(path, 'rw')
    os.pwrite(fd, b'held' * 1024, 0)
    print('opened', flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(trigger) and time.monotonic() < deadline:
        time.sleep(0.01)
    known = {
        'statfs': lambda: os.fstatvfs(fd),
        'read': lambda: os.pread(fd, 4096, 0),
        'fsync': lambda: os.fsync(fd),
        'close': lambda: os.close(fd),
    }
    return [[call, *timed(known[call])] for call in calls.split(',')]


def op_acked_writes(path, block, count):
    """Writes block i (filled with i % 251 + 1) at i * block, fsyncs, and
    prints each acknowledged index, until count or the first error."""
    fd = open_(path, 'direct')
    block, count = int(block), int(count)
    buf = mmap.mmap(-1, block)
    done = 0
    try:
        for i in range(count):
            buf[:] = bytes([i % 251 + 1]) * block
            os.pwritev(fd, [buf], i * block)
            os.fsync(fd)
            done = i + 1
            print(json.dumps({'acked': i}), flush=True)
    except OSError as e:
        return {'done': done, 'errno': errname(e.errno)}
    return {'done': done}


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10


def op_random_ops(path, seed, steps, shrink, limit, align='1'):
    """Random writes, reads, punched holes, zeroed ranges, truncates and
    fsyncs at random offsets and sizes, each answer checked against a model
    of the file (the whole file compared every 64 steps and at the end).
    `shrink` is what a smaller truncate must give: 'ok' or an errno name;
    the file never grows past `limit`; it grows in steps of `align` bytes
    (qcow2: 512), and a truncate to another size must fail EINVAL. Returns the count of each operation;
    the first difference raises, naming the step."""
    import random
    rng = random.Random(int(seed))
    steps, limit, align = int(steps), int(limit), int(align)
    fd = open_(path, 'rw')
    model = bytearray(os.pread(fd, os.fstat(fd).st_size, 0))
    counts = {}

    def fail(step, what):
        raise OSError(errno.EIO, f'step {step} (seed {seed}): {what}')

    def compare(step, offset, length):
        got = os.pread(fd, length, offset)
        want = bytes(model[offset:offset + length])
        if got != want:
            at = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
            fail(step, f'read {length} at {offset}: differs from the model at {offset + at} ({len(got)} bytes read)')

    ops = ['write', 'read', 'punch', 'zero', 'truncate', 'fsync']
    for step in range(steps):
        op = rng.choices(ops, weights=[40, 25, 10, 10, 5, 10])[0]
        counts[op] = counts.get(op, 0) + 1
        size = len(model)
        length = rng.choice([1, 511, 4096, 65536, rng.randrange(1, 300_000)])
        offset = rng.randrange(0, max(size, 1))
        if rng.random() < 0.3:
            offset -= offset % 4096
        if op == 'write':
            offset = min(offset + (rng.randrange(0, 8192) if rng.random() < 0.05 else 0), limit - 1)
            length = min(length, limit - offset)
            data = rng.randbytes(length)
            written = os.pwrite(fd, data, offset)
            if written != length:
                fail(step, f'write of {length} at {offset} wrote {written}')
            if offset + length > size:
                model.extend(bytes(-(-(offset + length) // align) * align - size))
            model[offset:offset + length] = data
            compare(step, offset, length)
        elif op == 'read':
            compare(step, offset, length)
        elif op in ('punch', 'zero'):
            mode = FALLOC_FL_KEEP_SIZE | (FALLOC_FL_PUNCH_HOLE if op == 'punch' else FALLOC_FL_ZERO_RANGE)
            fallocate(fd, mode, offset, length)
            end = min(offset + length, size)
            model[offset:end] = bytes(end - offset)
            compare(step, max(offset - 100, 0), end - offset + 200)
        elif op == 'truncate':
            new = rng.randrange(size // 2, min(size * 3 // 2, limit) + 1)
            try:
                os.ftruncate(fd, new)
                outcome = 'ok'
            except OSError as e:
                outcome = errname(e.errno)
            want = 'EINVAL' if new % align else 'ok' if new >= size else shrink
            if outcome != want:
                fail(step, f'truncate {size} -> {new}: {outcome}, expected {want}')
            if outcome == 'ok':
                model = model[:new] if new < size else model + bytes(new - size)
            if os.fstat(fd).st_size != len(model):
                fail(step, f'size {os.fstat(fd).st_size}, expected {len(model)}')
        else:
            os.fsync(fd)
        if step % 64 == 63:
            compare(step, 0, len(model) + 4096)
    compare(steps, 0, len(model) + 4096)
    if os.fstat(fd).st_size != len(model):
        fail(steps, f'final size {os.fstat(fd).st_size}, expected {len(model)}')
    os.close(fd)
    return counts


# A marker: the 4 KiB block that write `seq` of crash-loop round `round`
# puts at block `block`, so that a read-back can tell which write a block
# holds, whole, and whether it is where that write put it.
MARKER_BLOCK = 4096
MARKER_MAGIC = b'FXCRASH1'
MARKER_HEADER = struct.Struct('<8sIIQI')  # magic, round, seq, block, CRC-32 of the rest
MARKER_MAX_BLOCKS = 16


def marker(round_, seq, block):
    """The marker block: its header, then bytes derived from the three numbers."""
    rest = hashlib.shake_128(b'%d:%d:%d' % (round_, seq, block)).digest(MARKER_BLOCK - MARKER_HEADER.size)
    return MARKER_HEADER.pack(MARKER_MAGIC, round_, seq, block, zlib.crc32(rest)) + rest


def op_marked_writes(path, round_, seed, threads, how, seconds):
    """Random writes of 1 to 16 marker blocks by `threads` threads, each in
    its own slice of the file (half of its writes on 16 hot blocks, so that
    blocks are rewritten), each fsyncing after every 1 to 8 of its writes,
    for `seconds` or until the first error. One write in ten punches a hole
    instead, one in ten zeroes the range (FALLOC_FL_ZERO_RANGE): a qcow2
    image then frees and allocates clusters round after round. Prints
    {"w": [seq, block, count], "t": thread} before each write ("z": 1 for
    the two that leave zeroes) and {"s": seq, "t": thread} once an fsync
    returned: that thread's writes up to seq are durable. `how`: 'direct'
    (O_DIRECT) or 'rw' (through the page cache). Returns the count of
    writes and the errno each thread stopped on."""
    import random
    round_, threads = int(round_), int(threads)
    fd = open_(path, how)
    blocks = os.fstat(fd).st_size // MARKER_BLOCK
    end = time.monotonic() + float(seconds)
    say_lock = threading.Lock()
    seqs = itertools.count(1)
    stopped = {}

    def say(line):
        with say_lock:
            print(json.dumps(line), flush=True)

    def writer(thread):
        rng = random.Random(f'{seed}:{thread}')
        first, last = blocks * thread // threads, blocks * (thread + 1) // threads
        hot = [rng.randrange(first, last) for _ in range(16)]
        buf = mmap.mmap(-1, MARKER_MAX_BLOCKS * MARKER_BLOCK)
        try:
            while time.monotonic() < end:
                for _ in range(rng.randint(1, 8)):
                    start = rng.choice(hot) if rng.random() < 0.5 else rng.randrange(first, last)
                    count = min(rng.randint(1, MARKER_MAX_BLOCKS), last - start)
                    with say_lock:
                        seq = next(seqs)
                    hole = rng.choices([0, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE], weights=[8, 1, 1])[0]
                    if hole:
                        say({'w': [seq, start, count], 't': thread, 'z': 1})
                        fallocate(fd, FALLOC_FL_KEEP_SIZE | hole, start * MARKER_BLOCK, count * MARKER_BLOCK)
                        continue
                    data = b''.join(marker(round_, seq, block) for block in range(start, start + count))
                    buf[:len(data)] = data
                    say({'w': [seq, start, count], 't': thread})
                    os.pwritev(fd, [memoryview(buf)[:len(data)]], start * MARKER_BLOCK)
                os.fsync(fd)
                say({'s': seq, 't': thread})
        except OSError as e:
            stopped[thread] = errname(e.errno)

    workers = [threading.Thread(target=writer, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    try:
        os.close(fd)
    except OSError:
        pass  # the export was killed: the close may fail too, and says nothing new
    return {'writes': next(seqs) - 1, 'stopped': stopped}


def marker_state(data, block):
    """0 for zeroes, [round, seq] for the whole marker of that write at this
    block, else "x" and the CRC-32 of the bytes (a torn write, a marker out
    of place, anything else)."""
    if not data.strip(b'\0'):
        return 0
    if data.startswith(MARKER_MAGIC):
        _, round_, seq, at, _ = MARKER_HEADER.unpack_from(data)
        if at == block and data == marker(round_, seq, block):
            return [round_, seq]
    return 'x%08x' % zlib.crc32(data)


def op_marker_scan(path):
    """The marker_state of every 4 KiB block of the file, in order."""
    fd = open_(path, 'r')
    states = []
    try:
        size = os.fstat(fd).st_size
        chunk = 256 * MARKER_BLOCK
        for offset in range(0, size, chunk):
            data = os.pread(fd, chunk, offset)
            for at in range(0, len(data), MARKER_BLOCK):
                states.append(marker_state(data[at:at + MARKER_BLOCK], (offset + at) // MARKER_BLOCK))
    finally:
        os.close(fd)
    return states


def op_scan(path, block, limit, spread):
    """Reads the first `limit` bytes block by block, then `spread` blocks
    spaced evenly over the rest of the file; a failed read is counted by
    its errno and the scan goes on. Returns {"bytes": n, "EIO": m, ...}."""
    block, limit, spread = int(block), int(limit), int(spread)
    fd = open_(path, 'r')
    counts = {}
    try:
        size = os.fstat(fd).st_size
        offsets = list(range(0, min(size, limit), block))
        if size > limit:
            step = max(block, (size - limit) // max(spread, 1))
            offsets += list(range(limit, size, step))[:spread]
        for offset in offsets:
            try:
                os.pread(fd, block, offset)
                outcome = 'bytes'
            except OSError as e:
                outcome = errname(e.errno)
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts
    finally:
        os.close(fd)


def main():
    op, args = sys.argv[1], sys.argv[2:]
    try:
        result = {'ok': globals()['op_' + op](*args)}
    except OSError as e:
        result = {'errno': errname(e.errno), 'message': e.strerror}
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
