//! Thread placement: which CPUs the shard threads and the network threads run on.
//!
//! A shard thread is one glommio executor: pinned to a CPU of its own, it keeps its
//! caches and its io_uring warm and never waits behind another thread. The network
//! threads (tokio: gRPC, Flight, peer streams) share the CPUs left over. Pinning only
//! helps when every thread has a CPU to itself; on a box with fewer CPUs than threads
//! it would pile threads onto the same CPU, so `auto` pins only when there are CPUs to
//! spare. The CPUs are those the process may use (`sched_getaffinity`: a systemd
//! `CPUAffinity=` or a container's cpuset narrows them).

/// `--pin-threads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinThreads {
    /// Pin when the CPUs cover every shard and network thread.
    Auto,
    /// Pin, or refuse to start if the CPUs are too few.
    On,
    Off,
}

impl std::str::FromStr for PinThreads {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PinThreads::Auto),
            "on" => Ok(PinThreads::On),
            "off" => Ok(PinThreads::Off),
            other => Err(format!("pin_threads must be auto, on or off, not {other:?}")),
        }
    }
}

/// Where each thread runs: `None` lets the kernel decide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// One CPU per shard, in shard order.
    pub shard_cpus: Option<Vec<usize>>,
    /// The CPUs the network threads share.
    pub network_cpus: Option<Vec<usize>>,
}

impl Placement {
    /// Shard `i` on `allowed[i]`, the network threads on the next `network_threads`
    /// CPUs, when `mode` and the CPUs allow it.
    pub fn plan(allowed: &[usize], shards: usize, network_threads: usize, mode: PinThreads) -> Result<Self, String> {
        let needed = shards + network_threads;
        let fits = allowed.len() >= needed;
        match (mode, fits) {
            (PinThreads::Off, _) | (PinThreads::Auto, false) => Ok(Placement::default()),
            (PinThreads::On, false) => Err(format!(
                "--pin-threads on needs a CPU for each of {shards} shards and {network_threads} network threads, \
                 but this process may use {} CPUs",
                allowed.len()
            )),
            (_, true) => Ok(Placement {
                shard_cpus: Some(allowed[..shards].to_vec()),
                network_cpus: Some(allowed[shards..needed].to_vec()),
            }),
        }
    }

    /// A line for the log: what was decided.
    pub fn describe(&self) -> String {
        match (&self.shard_cpus, &self.network_cpus) {
            (Some(shards), Some(network)) => {
                format!("shards pinned to CPUs {shards:?}, network threads to {network:?}")
            }
            _ => "threads not pinned".into(),
        }
    }
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: `set` is a plain bit mask that sched_getaffinity fills; its size is
    // passed along, and CPU_ISSET only reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect())
    }
}

/// Restricts the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: as above; CPU_SET writes within the mask, and every CPU number comes
    // from `allowed_cpus`, so it is below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_pinned_only_when_every_one_has_a_cpu() {
        let sixteen: Vec<usize> = (0..16).collect();
        let pinned = Placement::plan(&sixteen, 8, 8, PinThreads::Auto).expect("fits");
        assert_eq!(pinned.shard_cpus, Some((0..8).collect()));
        assert_eq!(pinned.network_cpus, Some((8..16).collect()));
        assert_eq!(Placement::plan(&sixteen, 16, 2, PinThreads::Auto), Ok(Placement::default()), "no CPU to spare");
        assert_eq!(Placement::plan(&sixteen, 8, 8, PinThreads::Off), Ok(Placement::default()));
        let refused = Placement::plan(&[0, 1], 1, 2, PinThreads::On).expect_err("two CPUs for three threads");
        assert!(refused.contains("1 shards and 2 network threads") && refused.contains("2 CPUs"), "{refused}");
        // A narrowed set (systemd CPUAffinity=4-7) is used as given.
        let narrowed = Placement::plan(&[4, 5, 6, 7], 2, 2, PinThreads::On).expect("fits");
        assert_eq!((narrowed.shard_cpus, narrowed.network_cpus), (Some(vec![4, 5]), Some(vec![6, 7])));
    }

    #[test]
    fn this_thread_can_be_pinned_to_a_cpu_it_may_use() {
        let allowed = allowed_cpus().expect("affinity");
        assert!(!allowed.is_empty());
        let cpu = *allowed.last().expect("a CPU");
        std::thread::spawn(move || {
            pin_current_thread(&[cpu]).expect("pinned");
            assert_eq!(allowed_cpus().expect("affinity"), vec![cpu]);
        })
        .join()
        .expect("thread");
    }
}
