#!/usr/bin/env python3
"""Seed inputs for the fuzz targets (fuzz/fuzz_targets/), written under the
folder given, one sub-folder per target: qcow2 images made by qemu-img and
qemu-io of every variant the export serves or refuses, with operations in
front in the qcow2_image target's layout; FUSE messages; NBD block status
replies; backing-file names. `scripts/fuzz.sh --seeds` merges them into the
committed corpus."""

import os
import struct
import subprocess
import sys
import tempfile

KIB = 1024

# qcow2_image operation kinds (fuzz/src/backend.rs, Operation::next).
READ, SEEK_DATA, SEEK_HOLE, FLUSH, WRITE, DISCARD, ZERO_KEEP_SIZE, ZERO_GROW, ALLOCATE = 0, 2, 10, 3, 4, 5, 6, 14, 7
# qcow2_image flags: bit 1 writable, bit 2 growable (bit 0 the page cache).
READ_ONLY, WRITABLE, GROWABLE = 0, 2, 6

READ_AND_SEEK = [(READ, 0, 64 * KIB), (READ, 3 * KIB + 7, 9000), (SEEK_DATA, 0, 0), (SEEK_HOLE, 0, 0)]
WRITE_AND_CLEAR = [
    (WRITE, 512, 5000),
    (DISCARD, 0, 4 * KIB),
    (ZERO_KEEP_SIZE, 8 * KIB, 8 * KIB),
    (READ, 0, 32 * KIB),
    (SEEK_HOLE, 0, 0),
    (FLUSH, 0, 0),
]
GROW = [(WRITE, 1 << 20, 4 * KIB), (ZERO_GROW, (1 << 20) + 8 * KIB, 4 * KIB), (ALLOCATE, 2 << 20, 4 * KIB)]

# (name, qemu-img create options, qemu-io commands)
IMAGES = [
    ("v2", ["-o", "compat=0.10,cluster_size=4096"], ["write -P 0x11 0 12k", "write -P 0x22 20k 4k"]),
    ("v3-512", ["-o", "cluster_size=512"], ["write -P 0x33 0 6k", "write -z 8k 4k", "discard 2k 1k"]),
    ("compressed", ["-o", "cluster_size=4096"], ["write -c -P 0x44 0 16k", "write -P 0x55 16k 4k"]),
    ("zero-clusters", ["-o", "cluster_size=4096"], ["write -P 0x66 0 8k", "write -z 0 4k", "write -z -u 8k 8k"]),
    ("extended-l2", ["-o", "cluster_size=16384,extended_l2=on"], ["write -P 0x77 1k 3k"]),
    ("refcount-1", ["-o", "cluster_size=4096,refcount_bits=1"], ["write -P 0x88 0 4k"]),
    ("refcount-64", ["-o", "cluster_size=4096,refcount_bits=64,lazy_refcounts=on"], ["write -P 0x99 4k 4k"]),
    ("data-file", ["-o", "cluster_size=4096,data_file=data.raw"], ["write -P 0xaa 0 8k"]),
    ("backing", ["-o", "cluster_size=4096", "-b", "base.qcow2", "-F", "qcow2"], ["write -P 0xbb 4k 4k"]),
]


def run(*command, cwd):
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def qcow2_images(scratch):
    """Each variant's bytes, made in `scratch`."""
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "base.qcow2", "64k", cwd=scratch)
    images = {}
    for name, options, writes in IMAGES:
        path = f"{name}.qcow2"
        run("qemu-img", "create", "-q", "-f", "qcow2", *options, path, "64k", cwd=scratch)
        run("qemu-io", "-f", "qcow2", *sum((["-c", w] for w in writes), []), path, cwd=scratch)
        with open(os.path.join(scratch, path), "rb") as f:
            images[name] = f.read()
    return images


def operations(flags, ops):
    """The qcow2_image target's prefix: flags, count, then (kind, offset, length) each."""
    return bytes([flags, len(ops)]) + b"".join(struct.pack("<BQQ", *op) for op in ops)


def fuse_message(opcode, args, unique=1):
    """A FUSE request as /dev/fuse delivers it: the in-header, then its arguments."""
    return struct.pack("<IIQQIIII", 40 + len(args), opcode, unique, 1, 0, 0, 0, 0) + args


def fuse_messages():
    init = struct.pack("<IIII", 7, 45, 128 * KIB, 0x4000_0000) + struct.pack("<I", 1 << 9) + bytes(44)
    read = struct.pack("<QQIIQII", 0, 4096, 512, 0, 0, 0, 0)
    write = struct.pack("<QQIIQII", 0, 8192, 4, 0, 0, 0, 0) + b"abcd"
    setattr_ = bytes(88)
    fallocate = struct.pack("<QQQII", 0, 0, 4096, 3, 0)
    lseek = struct.pack("<QQII", 0, 0, 3, 0)
    return {
        "init": fuse_message(26, init),
        "read": fuse_message(15, read),
        "write": fuse_message(16, write),
        "setattr": fuse_message(4, setattr_),
        "fallocate": fuse_message(43, fallocate),
        "lseek": fuse_message(46, lseek),
        "getattr": fuse_message(3, bytes(16)),
        "open": fuse_message(14, struct.pack("<II", 2, 0)),
    }


def nbd_replies():
    """Export size, offset, seek kind, then replies: an entry count and the (length, flags) entries."""

    def seed(size, offset, hole, replies):
        body = b"".join(bytes([2 * len(r)]) + b"".join(struct.pack("<II", *e) for e in r) for r in replies)
        return struct.pack("<QQB", size, offset, hole) + body

    mib = 1 << 20
    return {
        "data-then-hole": seed(4 * mib, 0, 1, [[(mib, 0), (mib, 1)], [(2 * mib, 0)]]),
        "hole-then-data": seed(4 * mib, 4096, 0, [[(mib, 1)], [(3 * mib, 0)]]),
        "all-hole": seed(mib, 0, 0, [[(mib, 3)]]),
        "empty-extent": seed(mib, 0, 1, [[(0, 0)]]),
        "past-the-end": seed(mib, 0, 1, [[(4 * mib, 0)]]),
    }


def backing_names():
    """The backing_chain target's flags (bits 2-3 the backing format) and names of top, mid and d/deep."""

    def seed(flags, *names):
        return bytes([flags]) + b"\0".join(names)

    return {
        "base": seed(0, b"base.qcow2"),
        "qcow2-format": seed(4, b"mid.qcow2", b"base.qcow2"),
        "raw-format": seed(8, b"raw.img"),
        "absolute": seed(0, b"@/mid.qcow2", b"@/d/deep.qcow2", b"../base.qcow2"),
        "deep": seed(2, b"d/deep.qcow2", b"", b"../mid.qcow2"),
        "self-loop": seed(0, b"./top.qcow2"),
        "link-loop": seed(4, b"link.qcow2"),
        "mid-loop": seed(0, b"mid.qcow2", b"d/../top.qcow2"),
        "missing": seed(0, b"missing.qcow2"),
        "named-format": seed(12, b"vmdk", b"raw.img"),
    }


def write_all(folder, seeds):
    os.makedirs(folder, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def main(out):
    with tempfile.TemporaryDirectory() as scratch:
        images = qcow2_images(scratch)
    qcow2 = {}
    for name, image in images.items():
        qcow2[f"{name}-read-only"] = operations(READ_ONLY, READ_AND_SEEK) + image
        qcow2[f"{name}-writable"] = operations(WRITABLE, WRITE_AND_CLEAR) + image
    qcow2["v3-512-growable"] = operations(GROWABLE, GROW) + images["v3-512"]
    write_all(os.path.join(out, "qcow2_image"), qcow2)
    probe = {name: struct.pack("<Q", len(image)) + image[:512] for name, image in images.items()}
    write_all(os.path.join(out, "probe"), probe)
    messages = fuse_messages()
    write_all(os.path.join(out, "fuse_request"), messages)
    write_all(os.path.join(out, "nbd_extents"), nbd_replies())
    write_all(os.path.join(out, "backing_chain"), backing_names())


if __name__ == "__main__":
    main(sys.argv[1])
