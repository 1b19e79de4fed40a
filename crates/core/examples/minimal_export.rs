//! A whole export in Rust alone, as documentation of the core's interface:
//! open, mount, serve, and the stop that TypeScript does for the product
//! (drain, unmount, wait for the connection to end, abort if it does not).
//!
//! As root: `cargo run -p fuse-export-core --example minimal_export -- IMAGE MOUNTPOINT`
//! (MOUNTPOINT an existing regular file), then read and write MOUNTPOINT;
//! Ctrl-C stops.

use fuse_export_core::image::{CacheMode, FormatChoice, ImageOptions};
use fuse_export_core::runtime::pool::IoThreads;
use fuse_export_core::server::{Server, StartOptions, Switch};
use fuse_export_core::status::Event;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, image, mountpoint] = &args[..] else {
        eprintln!("usage: minimal_export IMAGE MOUNTPOINT");
        std::process::exit(1);
    };
    // Signals are blocked before the I/O threads start (they inherit the
    // mask), so that only `wait_for_signal` below receives them.
    let signals = block_signals(&[libc::SIGINT, libc::SIGTERM]);
    // Threads that more exports could share; this one is alone on them.
    let io_threads = IoThreads::start(2, "io", 0).unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(1);
    });

    let options = StartOptions {
        image: ImageOptions {
            path: image.into(),
            writable: true,
            growable: false,
            cache: CacheMode::Direct,
            format: FormatChoice::Auto,
            ..Default::default()
        },
        mountpoint: mountpoint.into(),
        allow_other: Switch::Off,
        io_uring: Switch::Auto,
        passthrough: Switch::Auto,
        threads: io_threads.threads().to_vec(),
        queue_depth: 64,
        poll_max: Duration::ZERO,
    };
    // Events come from the I/O threads: the disconnect is what the stop waits for.
    let (disconnected, connection_ended) = mpsc::channel();
    let events = Box::new(move |event: Event| {
        eprintln!("event: {event:?}");
        if event == Event::Disconnected {
            let _ = disconnected.send(());
        }
    });
    let mut server = Server::start(options, events).unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(1);
    });
    let info = server.info();
    eprintln!(
        "serving {image} ({} bytes) on {mountpoint} over {} ({}); Ctrl-C stops",
        info.size, info.transport, info.transport_reason
    );

    wait_for_signal(&signals);
    let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
    server.pause();
    while server.stats().in_flight > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if let Err(error) = server.unmount() {
        eprintln!("{error}");
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if connection_ended.recv_timeout(left).is_err() {
        eprintln!("the connection did not end (the file is still open somewhere): aborting it");
        if let Err(error) = server.abort_connection() {
            eprintln!("{error}");
        }
    }
    let still_running = server.stop(Duration::from_secs(1));
    let stats = server.stats();
    eprintln!(
        "stopped: {} bytes read, {} written, {still_running} thread(s) left",
        stats.bytes_read, stats.bytes_written
    );
}

fn block_signals(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data handled only through the sig* calls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) {
    let mut signal = 0;
    // SAFETY: the set was filled by block_signals; sigwait writes one int.
    unsafe { libc::sigwait(set, &mut signal) };
}
