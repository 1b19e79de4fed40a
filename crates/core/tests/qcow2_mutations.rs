//! qcow2 header and table parsing, fed mutated real images: a real image
//! made by qemu-img (header, L1, refcount table, L2 tables, a compressed
//! cluster) with bytes of its metadata changed, opened and walked (every
//! mapping, through SEEK_DATA / SEEK_HOLE): an error is fine, a panic or a
//! hang is not. It needs qemu-img (`npm test` installs it) and fails
//! without it.

mod common;

use common::open_and_walk;
use fuse_export_core::image;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

/// How much of a mutated image's virtual size is walked.
const WALKED: u64 = 1 << 30;

fn qemu(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

/// A 64 MiB qcow2 with 4 KiB clusters (so that the metadata is dense in the
/// first bytes), some data, a zeroed cluster and a compressed one.
fn real_image(dir: &Path) -> Option<Vec<u8>> {
    let path = dir.join("real.qcow2");
    let path = path.to_str()?;
    if !qemu("qemu-img", &["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "64M"]) {
        return None;
    }
    let writes = ["write -P 0x11 0 64k", "write -P 0x22 30M 8k", "write -z 31M 4k", "write -c -P 0x33 40M 4k"];
    let mut args = vec!["-f", "qcow2"];
    for w in &writes {
        args.extend(["-c", w]);
    }
    args.push(path);
    qemu("qemu-io", &args).then(|| std::fs::read(path).ok())?
}

/// A small deterministic generator (xorshift), so that a failure repeats.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_real_images_open_or_fail_but_never_panic() {
    let dir: PathBuf = std::env::temp_dir().join(format!("fuse-export-mutations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let original =
        real_image(&dir).expect("qemu-img and qemu-io (Debian's qemu-utils, which `npm test` installs) made the image");
    // Where the metadata lies: the header, the L1 table, the refcount
    // table, and the L2 tables the L1 entries name.
    let header = image::probe::parse_qcow2_header(&original[..512]).unwrap();
    let cluster = 1usize << header.cluster_bits;
    let (l1, l1_len) = (header.l1_table.0 as usize, header.l1_table.1 as usize);
    let mut spans = vec![(0, 512), (l1, l1_len), (header.refcount_table.0 as usize, cluster)];
    for entry in original[l1..l1 + l1_len].chunks(8) {
        let l2 = (u64::from_be_bytes(entry.try_into().unwrap()) & 0x00ff_ffff_ffff_fe00) as usize;
        if l2 != 0 {
            spans.push((l2, cluster));
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mutated = dir.join("mutated.qcow2");
    let (mut opened, mut refused) = (0, 0);
    for case in 0..400 {
        let mut bytes = original.clone();
        for _ in 0..1 + rng.next() % 4 {
            let (start, len) = spans[(rng.next() as usize) % spans.len()];
            let at = start + (rng.next() as usize) % len;
            bytes[at] = match rng.next() % 4 {
                0 => 0,
                1 => 0xff,
                2 => bytes[at] ^ (1 << (rng.next() % 8)),
                _ => rng.next() as u8,
            };
        }
        std::fs::write(&mutated, &bytes).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| open_and_walk(&mutated, false, WALKED).is_ok()));
        match outcome {
            Ok(true) => opened += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("case {case} panicked; the image is kept at {}", mutated.display()),
        }
    }
    // Both outcomes occur, or the mutations miss the metadata (or all of it is fatal).
    assert!(opened > 20 && refused > 20, "{opened} opened, {refused} refused");
    // The unmutated image itself opens and holds data.
    std::fs::write(&mutated, &original).unwrap();
    assert!(open_and_walk(&mutated, false, WALKED).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}
