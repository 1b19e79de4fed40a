//! Which CPUs a thread runs on: an I/O thread on one CPU while every export
//! it serves has only that CPU's FUSE queue on it, else wherever the
//! process may run; helper threads wherever the process may run.

/// Where the process may run: the main thread's CPUs (its thread id is
/// the process id).
fn allowed() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; the kernel fills it.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size is the set's own; getpid cannot fail.
    unsafe { libc::sched_getaffinity(libc::getpid(), std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) };
    allowed
}

/// Runs the calling thread wherever the process may, whatever CPU the
/// thread that started it was pinned to.
pub fn run_anywhere() {
    let allowed = allowed();
    // SAFETY: the size is the set's own.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &allowed) };
}

pub struct Affinity {
    allowed: libc::cpu_set_t,
    pinned: Option<usize>,
}

impl Affinity {
    /// The calling thread runs wherever the process may, until pinned.
    pub fn of_process() -> Self {
        run_anywhere();
        Self { allowed: allowed(), pinned: None }
    }

    /// Runs the calling thread on `cpu`, or back where it was allowed. An
    /// offline CPU refuses: then the thread simply floats.
    pub fn run_on(&mut self, cpu: Option<usize>) {
        if cpu == self.pinned {
            return;
        }
        self.pinned = cpu;
        let set = match cpu {
            // SAFETY: cpu_set_t is plain data; CPU_SET stays within it.
            Some(cpu) if cpu < libc::CPU_SETSIZE as usize => unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                set
            },
            _ => self.allowed,
        };
        // SAFETY: the size is the set's own.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    }
}
