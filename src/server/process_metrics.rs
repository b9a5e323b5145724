//! The process's own metrics under the names every Prometheus exporter uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
//! `process_start_time_seconds`), and `quarry_build_info`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
    commit: &'static str,
}

pub struct ProcessMetrics {
    pub registry: Registry,
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
    open_fds: Gauge,
}

impl ProcessMetrics {
    pub fn new() -> ProcessMetrics {
        let mut registry = Registry::default();
        let cpu_seconds = Counter::<f64, AtomicU64>::default();
        registry.register("process_cpu_seconds", "CPU time (user + system) this process used", cpu_seconds.clone());
        let resident_bytes = Gauge::default();
        registry.register("process_resident_memory_bytes", "Resident memory of this process", resident_bytes.clone());
        let open_fds = Gauge::default();
        registry.register("process_open_fds", "Open file descriptors", open_fds.clone());
        let start_time = Gauge::<f64, AtomicU64>::default();
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        start_time.set(started);
        registry.register("process_start_time_seconds", "When this process started, in Unix seconds", start_time);
        let build = Family::<BuildLabel, Gauge>::default();
        build
            .get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION"), commit: env!("QUARRY_GIT_COMMIT") })
            .set(1);
        registry.register("quarry_build_info", "The version and git commit quarryd was built from (always 1)", build);
        ProcessMetrics { registry, cpu_seconds, resident_bytes, open_fds }
    }

    /// Reads the process's CPU time, memory and descriptors now.
    pub fn record(&self) {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            let total = seconds(usage.ru_utime) + seconds(usage.ru_stime);
            let grown = total - self.cpu_seconds.get();
            if grown > 0.0 {
                self.cpu_seconds.inc_by(grown);
            }
        }
        // statm's second field is resident pages.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as i64;
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<i64>().ok()))
        {
            self.resident_bytes.set(pages.saturating_mul(page));
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
    }
}
