//! Which CPUs an I/O thread runs on: one CPU while every export it serves
//! has only that CPU's FUSE queue on it, else wherever it was allowed to
//! run when it started.

pub struct Affinity {
    allowed: libc::cpu_set_t,
    pinned: Option<usize>,
}

impl Affinity {
    /// The calling thread's CPUs now.
    pub fn current() -> Self {
        // SAFETY: cpu_set_t is plain data; the kernel fills it.
        let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the size is the set's own.
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) };
        Self { allowed, pinned: None }
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
