//! qcow2 headers that ask for absurd amounts of memory or time, opened and
//! walked (every mapping, through SEEK_DATA / SEEK_HOLE) in a child process
//! each: the child must end on its own within a deadline, refused or
//! served, with a peak RSS (VmHWM) under 256 MiB. The images are sparse
//! files: their tables lie within them, as a hostile download's would.

mod common;

use common::open_and_walk;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The child's entry: set, the test below opens and walks that image.
const CHILD_IMAGE: &str = "FUSE_EXPORT_HOSTILE_IMAGE";
const CHILD_WRITABLE: &str = "FUSE_EXPORT_HOSTILE_WRITABLE";
const PEAK_LIMIT_KIB: u64 = 256 << 10;
const DEADLINE: Duration = Duration::from_secs(30);

/// A qcow2 v2 file (`cluster_bits`, `size` bytes virtual): an L1 table of
/// `l1_entries` at cluster 2 whose first `l2_tables` entries name L2 tables
/// of zeroes at clusters 3 onwards, a refcount table of `refcount_clusters`
/// at cluster 1, an optional backing file name.
#[derive(Clone)]
struct Header {
    cluster_bits: u32,
    size: u64,
    l1_entries: u32,
    l2_tables: u64,
    refcount_clusters: u32,
    backing: Option<String>,
}

impl Header {
    fn write(&self, path: &Path) {
        let cluster = 1u64 << self.cluster_bits;
        let file = File::create(path).unwrap();
        let mut header = vec![0u8; 72];
        header[..4].copy_from_slice(b"QFI\xfb");
        header[4..8].copy_from_slice(&2u32.to_be_bytes());
        if let Some(name) = &self.backing {
            header[8..16].copy_from_slice(&72u64.to_be_bytes());
            header[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            header.extend_from_slice(name.as_bytes());
        }
        header[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        header[24..32].copy_from_slice(&self.size.to_be_bytes());
        header[36..40].copy_from_slice(&self.l1_entries.to_be_bytes());
        let l1 = 2 * cluster;
        header[40..48].copy_from_slice(&l1.to_be_bytes());
        header[48..56].copy_from_slice(&cluster.to_be_bytes());
        header[56..60].copy_from_slice(&self.refcount_clusters.to_be_bytes());
        file.write_all_at(&header, 0).unwrap();
        let mut entries = Vec::new();
        for n in 0..self.l2_tables {
            entries.extend_from_slice(&(((3 + n) * cluster) | (1 << 63)).to_be_bytes());
        }
        file.write_all_at(&entries, l1).unwrap();
        // Every table within the file: the L1 table, the L2 tables, the refcount table.
        let l1_end = l1 + u64::from(self.l1_entries) * 8;
        let l2_end = (3 + self.l2_tables) * cluster;
        let refcount_end = (1 + u64::from(self.refcount_clusters)) * cluster;
        file.set_len(l1_end.max(l2_end).max(refcount_end).max(3 * cluster)).unwrap();
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn hostile_header_child() {
    let Some(path) = std::env::var_os(CHILD_IMAGE) else { return };
    let writable = std::env::var_os(CHILD_WRITABLE).is_some();
    let outcome = open_and_walk(Path::new(&path), writable, u64::MAX);
    println!("outcome: {outcome:?}");
    println!("peak: {} KiB", peak_rss_kib());
}

/// Runs the child on `image`: (its output, the time it took). A child past
/// the deadline is killed and fails the test.
fn run_child(image: &Path, writable: bool) -> (String, Duration) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "hostile_header_child", "--nocapture", "--test-threads=1"]).env(CHILD_IMAGE, image);
    if writable {
        command.env(CHILD_WRITABLE, "1");
    }
    let started = Instant::now();
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{} took longer than {DEADLINE:?}", image.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}: the child failed: {:?}", image.display(), output.status);
    (String::from_utf8_lossy(&output.stdout).into_owned(), started.elapsed())
}

#[test]
fn hostile_headers_are_refused_or_served_within_256_mib_and_a_deadline() {
    let dir: PathBuf = std::env::temp_dir().join(format!("fuse-export-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    const GIB: u64 = 1 << 30;
    let base =
        Header { cluster_bits: 16, size: GIB, l1_entries: 16, l2_tables: 0, refcount_clusters: 1, backing: None };
    let mut cases: Vec<(String, Header, bool)> = vec![
        // 2 MiB clusters and 200 L2 tables: imago's cache of 128 would hold 256 MiB.
        (
            "l2-cache.qcow2".into(),
            Header { cluster_bits: 21, size: 200 << 39, l1_entries: 200, l2_tables: 200, ..base.clone() },
            false,
        ),
        // The largest refcount table imago takes (32 MiB), opened writable.
        ("refcounts.qcow2".into(), Header { cluster_bits: 12, refcount_clusters: 8192, ..base.clone() }, true),
        // An exabyte with one L1 entry: a walk of 2^42 empty L1 ranges.
        ("vast.qcow2".into(), Header { cluster_bits: 9, size: 1 << 60, l1_entries: 1, ..base.clone() }, false),
    ];
    // A chain of eight files with the largest L1 table imago takes (32 MiB each).
    for n in 0..8 {
        let backing = (n > 0).then(|| format!("chain-{}.qcow2", n - 1));
        cases.push((format!("chain-{n}.qcow2"), Header { l1_entries: 4 << 20, backing, ..base.clone() }, false));
    }
    let mut report = Vec::new();
    for (name, header, writable) in &cases {
        header.write(&dir.join(name));
        if !name.starts_with("chain-") || name == "chain-7.qcow2" {
            let (output, took) = run_child(&dir.join(name), *writable);
            let peak: u64 =
                output.lines().find_map(|l| l.strip_prefix("peak: ")?.strip_suffix(" KiB")?.parse().ok()).unwrap();
            // The harness prints the test's name on the line the child's output starts.
            let outcome = output.lines().find_map(|l| Some(l.split_once("outcome: ")?.1)).unwrap_or("").to_string();
            report.push(format!("{name}: peak {} MiB in {took:.1?}, {outcome}", peak >> 10));
            assert!(peak < PEAK_LIMIT_KIB, "{name}: peak RSS {} MiB ({outcome})", peak >> 10);
        }
    }
    eprintln!("{}", report.join("\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}
