//! The qcow2 backend driven the way the request core drives it, without a
//! mount: operations submitted with a ring, completions (ring transfers and
//! workers' posts) fed back until each is done, results checked against a
//! model of the disk, and the image checked by qemu-img afterwards. The
//! tests need qemu-img (`npm test` installs it) and fail without it.

use fuse_export_core::image::{self, CacheMode, FormatChoice, ImageBackend, ImageIo, ImageOp, ImageOptions, IoContext};
use fuse_export_core::runtime::buffer::AlignedBuffer;
use fuse_export_core::runtime::ring::Ring;
use fuse_export_core::runtime::token::Token;
use std::process::Command;
use std::task::Poll;

fn tool(program: &str, args: &[&str]) -> Option<std::process::Output> {
    Command::new(program).args(args).output().ok()
}

/// One operation in progress: its state and its buffer.
struct Started {
    io: ImageIo,
    buffer: AlignedBuffer,
    outcome: Poll<i32>,
}

const TOKEN: Token = Token::new(3, 0, 1);

/// Starts one operation: what it put on the ring is not submitted yet.
fn start(image: &dyn ImageBackend, ring: &mut Ring, op: ImageOp, offset: u64, data: &[u8], len: u64) -> Started {
    let buffer = AlignedBuffer::zeroed((len as usize).max(4096));
    // SAFETY: the buffer holds at least `len` bytes, ours until the operation ends.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buffer.as_ptr(), data.len()) };
    let mut io = ImageIo::new(op, offset, len);
    let outcome = image.submit(&mut io, IoContext { ring, token: TOKEN, buffer: buffer.as_ptr() });
    Started { io, buffer, outcome }
}

/// Runs a started operation to its end: (result, the buffer afterwards).
fn finish(image: &dyn ImageBackend, ring: &mut Ring, started: Started) -> (i32, Vec<u8>) {
    let Started { mut io, buffer, mut outcome } = started;
    let mut completions = Vec::new();
    let result = loop {
        if let Poll::Ready(result) = outcome {
            break result;
        }
        ring.submit(1);
        ring.reap(&mut completions);
        let result = completions.first().expect("a completion").result;
        assert_eq!(completions.len(), 1, "one operation in flight, one completion at a time");
        outcome = image.complete(&mut io, result, IoContext { ring, token: TOKEN, buffer: buffer.as_ptr() });
    };
    // SAFETY: `len` bytes of our buffer.
    (result, unsafe { std::slice::from_raw_parts(buffer.as_ptr(), io.len as usize) }.to_vec())
}

/// Runs one operation to its end: (result, the buffer afterwards).
fn run(image: &dyn ImageBackend, ring: &mut Ring, op: ImageOp, offset: u64, data: &[u8], len: u64) -> (i32, Vec<u8>) {
    let started = start(image, ring, op, offset, data, len);
    finish(image, ring, started)
}

#[test]
fn reads_writes_growth_discards_zeroes_and_flushes_match_a_model() {
    let dir = std::env::temp_dir().join(format!("fuse-export-qcow2-backend-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (base, top) = (dir.join("base.qcow2"), dir.join("top.qcow2"));
    let (base_s, top_s) = (base.to_str().unwrap(), top.to_str().unwrap());
    let made = tool("qemu-img", &["create", "-q", "-f", "qcow2", base_s, "4M"]).is_some_and(|o| o.status.success())
        && tool("qemu-io", &["-f", "qcow2", "-c", "write -P 0x5a 0 2M", "-c", "write -c -P 0x6b 3M 64k", base_s])
            .is_some_and(|o| o.status.success())
        && tool("qemu-img", &["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top_s, "4M"])
            .is_some_and(|o| o.status.success());
    assert!(made, "qemu-img and qemu-io (Debian's qemu-utils, which `npm test` installs) made the test images");
    let mut model = vec![0x5au8; 2 << 20];
    model.resize(4 << 20, 0);
    model[3 << 20..(3 << 20) + 65536].fill(0x6b);

    let options = ImageOptions {
        path: top.clone(),
        writable: true,
        growable: true,
        cache: CacheMode::Direct,
        format: FormatChoice::Auto,
        ..Default::default()
    };
    let (image, _) = image::open(&options).unwrap();
    assert_eq!((image.format(), image.size()), ("qcow2", 4 << 20));
    let mut ring = Ring::new(16).unwrap();
    let pattern =
        |len: usize, seed: u8| (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<_>>();
    let mut write = |image: &dyn ImageBackend, model: &mut Vec<u8>, offset: usize, data: Vec<u8>| {
        let (result, _) = run(image, &mut ring, ImageOp::Write, offset as u64, &data, data.len() as u64);
        assert_eq!(result, data.len() as i32, "write at {offset}");
        let end = (offset + data.len()).next_multiple_of(512);
        if end > model.len() {
            model.resize(end, 0);
        }
        model[offset..offset + data.len()].copy_from_slice(&data);
    };
    // Over backing data, across clusters, unaligned; over the compressed cluster; aligned (O_DIRECT).
    write(&*image, &mut model, 65536 - 1000, pattern(200_000, 1));
    write(&*image, &mut model, (3 << 20) + 4096, pattern(4096, 2));
    write(&*image, &mut model, 1 << 20, pattern(1 << 20, 3));
    // Past the end: the image grows (on a worker) to the next sector.
    write(&*image, &mut model, (5 << 20) + 100, pattern(1000, 4));
    assert_eq!(image.size(), model.len() as u64);
    let mut ring = Ring::new(16).unwrap();
    assert_eq!(run(&*image, &mut ring, ImageOp::Discard, 0, &[], 65536).0, 0);
    model[..65536].fill(0);
    assert_eq!(run(&*image, &mut ring, ImageOp::WriteZeroes, 3 << 20, &[], 8192).0, 0);
    model[3 << 20..(3 << 20) + 8192].fill(0);
    assert_eq!(run(&*image, &mut ring, ImageOp::Flush, 0, &[], 0).0, 0);
    for (offset, len) in
        [(0, 1 << 20), (1 << 20, 1 << 20), (2 << 20, 1 << 20), (3 << 20, 1 << 20), (4 << 20, model.len() - (4 << 20))]
    {
        let (result, bytes) = run(&*image, &mut ring, ImageOp::Read, offset as u64, &[], len as u64);
        assert_eq!(result, len as i32);
        assert!(bytes == model[offset..offset + len], "read at {offset} differs from the model");
    }
    drop(image);
    let check = tool("qemu-img", &["check", top_s]).unwrap();
    assert!(check.status.success(), "qemu-img check: {}", String::from_utf8_lossy(&check.stdout));
    let raw = dir.join("top.raw");
    assert!(tool("qemu-img", &["convert", "-O", "raw", top_s, raw.to_str().unwrap()]).unwrap().status.success());
    assert!(std::fs::read(&raw).unwrap() == model, "qemu-img sees another disk than the model");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A read whose cluster was looked up, then discarded and reused by a new
/// allocation before the read's data transfer ran, would return the new
/// data: the read must hold off the discard until its transfer is done.
#[test]
fn a_discard_never_frees_a_cluster_a_read_in_flight_has_mapped() {
    let dir = std::env::temp_dir().join(format!("fuse-export-qcow2-race-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("race.qcow2");
    let made = tool("qemu-img", &["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "4M"]);
    assert!(made.is_some_and(|o| o.status.success()), "qemu-img (Debian's qemu-utils) made the test image");
    let options = ImageOptions {
        path: path.clone(),
        writable: true,
        growable: false,
        cache: CacheMode::Writeback,
        format: FormatChoice::Qcow2,
        ..Default::default()
    };
    let (image, _) = image::open(&options).unwrap();
    let cluster = 65536;
    let (old, new) = (vec![0x0au8; cluster], vec![0x0bu8; cluster]);
    let mut ring = Ring::new(16).unwrap();
    assert_eq!(run(&*image, &mut ring, ImageOp::Write, 0, &old, cluster as u64).0, cluster as i32);
    // The read's transfer waits on the ring, unsubmitted, while another
    // thread discards its cluster and allocates a new one.
    let read = start(&*image, &mut ring, ImageOp::Read, 0, &[], cluster as u64);
    assert!(read.outcome.is_pending(), "the read's transfer is on the ring");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let racer = {
        let image = image.clone();
        std::thread::spawn(move || {
            let mut ring = Ring::new(16).unwrap();
            assert_eq!(run(&*image, &mut ring, ImageOp::Discard, 0, &[], cluster as u64).0, 0);
            assert_eq!(run(&*image, &mut ring, ImageOp::Write, 1 << 20, &new, cluster as u64).0, cluster as i32);
            done_tx.send(()).unwrap();
        })
    };
    // Give the racer the time to reuse the cluster (it must not be able to).
    let raced = done_rx.recv_timeout(std::time::Duration::from_millis(500)).is_ok();
    let (result, bytes) = finish(&*image, &mut ring, read);
    racer.join().unwrap();
    assert_eq!(result, cluster as i32);
    assert!(bytes == old || bytes.iter().all(|&b| b == 0), "the read returned another offset's data (raced: {raced})");
    drop(image);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// imago opens an image's external data file writable whatever the image
/// is opened as (test/fixtures/README.md); a read-only export must still
/// open it read-only, so that it takes a reader's lock and other readers
/// share the file.
#[test]
fn read_only_exports_open_the_external_data_file_read_only() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test/fixtures");
    let dir = std::env::temp_dir().join(format!("fuse-export-qcow2-data-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["external-data-file.qcow2", "external-data-file.raw"] {
        std::fs::copy(fixtures.join(name), dir.join(name)).unwrap();
    }
    let options = ImageOptions {
        path: dir.join("external-data-file.qcow2"),
        writable: false,
        growable: false,
        cache: CacheMode::Writeback,
        format: FormatChoice::Qcow2,
        ..Default::default()
    };
    let (first, _) = image::open(&options).unwrap();
    let second = image::open(&options).map(|_| ());
    assert!(second.is_ok(), "a second reader was refused: {:?}", second.err().map(|e| e.0));
    drop(first);
    std::fs::remove_dir_all(&dir).unwrap();
}
