//! CPU time and memory of processes and of the machine, from `/proc`, for
//! the benchmark binaries (Linux only; zero where `/proc` says nothing),
//! and the instruction count of a callgrind dump.

/// The instructions a callgrind output file counts, from its text: the
/// `totals:` line (`summary:` in older valgrinds). Used by proxy-bench and
/// bulk-bench `--callgrind`.
pub fn callgrind_instructions(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Clock ticks per second of `/proc` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of process `pid` (this process when `None`), in seconds.
/// Reads `stat` alone: the JVMs bulk-bench watches have a hundred threads,
/// whose files [`ProcessCounters::read`] would also read.
pub fn process_cpu_seconds(pid: Option<u32>) -> f64 {
    let (user, system) = cpu_seconds(&proc_dir(pid));
    user + system
}

/// `/proc/self` or `/proc/<pid>`.
fn proc_dir(pid: Option<u32>) -> String {
    pid.map_or("/proc/self".to_owned(), |p| format!("/proc/{p}"))
}

/// (utime, stime) in seconds from the `stat` of the process at `dir`.
fn cpu_seconds(dir: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
    // Fields after the ")" that closes the command name; utime and stime
    // are fields 14 and 15 of the whole line.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / TICKS_PER_SECOND, ticks(12) / TICKS_PER_SECOND)
}

/// Where a process's CPU time goes, as counters that only grow: the
/// difference of two readings, divided by the requests served between them,
/// says what one request costs in user time, kernel time, read and write
/// system calls, and sleeps (each voluntary context switch is the process
/// waiting for I/O and being woken again: a wake-up).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessCounters {
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// `syscr` of `/proc/<pid>/io`: read-like system calls (read, recvmsg…).
    pub read_calls: f64,
    /// `syscw`: write-like system calls (write, sendmsg, writev…).
    pub write_calls: f64,
    /// `voluntary_ctxt_switches` of `/proc/<pid>/status`, summed over the
    /// process's threads.
    pub sleeps: f64,
}

impl ProcessCounters {
    /// Reads process `pid` (this process when `None`); a counter `/proc`
    /// does not give (another user's `io`, say) reads as zero.
    pub fn read(pid: Option<u32>) -> Self {
        let dir = proc_dir(pid);
        let (user_seconds, system_seconds) = cpu_seconds(&dir);
        let io = std::fs::read_to_string(format!("{dir}/io")).unwrap_or_default();
        // The process's threads each count their own switches; the
        // process's `status` gives only the main thread's.
        let sleeps = std::fs::read_dir(format!("{dir}/task"))
            .map(|tasks| {
                tasks
                    .filter_map(Result::ok)
                    .map(|t| {
                        let status =
                            std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                        field_of(&status, "voluntary_ctxt_switches:")
                    })
                    .sum()
            })
            .unwrap_or(0.0);
        Self {
            user_seconds,
            system_seconds,
            read_calls: field_of(&io, "syscr:"),
            write_calls: field_of(&io, "syscw:"),
            sleeps,
        }
    }

    /// What each of `requests` cost between `earlier` and `self`.
    pub fn per_request_since(&self, earlier: &Self, requests: u64) -> PerRequest {
        let n = requests.max(1) as f64;
        PerRequest {
            user_us: (self.user_seconds - earlier.user_seconds) * 1e6 / n,
            system_us: (self.system_seconds - earlier.system_seconds) * 1e6 / n,
            read_calls: (self.read_calls - earlier.read_calls) / n,
            write_calls: (self.write_calls - earlier.write_calls) / n,
            sleeps: (self.sleeps - earlier.sleeps) / n,
        }
    }
}

/// One request's share of a process's counters ([`ProcessCounters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerRequest {
    pub user_us: f64,
    pub system_us: f64,
    pub read_calls: f64,
    pub write_calls: f64,
    pub sleeps: f64,
}

impl PerRequest {
    pub fn cpu_us(&self) -> f64 {
        self.user_us + self.system_us
    }
}

impl std::fmt::Display for PerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} us CPU ({:.1} user, {:.1} kernel), {:.2} reads, {:.2} writes, {:.2} wake-ups",
            self.cpu_us(),
            self.user_us,
            self.system_us,
            self.read_calls,
            self.write_calls,
            self.sleeps
        )
    }
}

/// The number after `key` on its line of a `/proc` file (0 when absent).
fn field_of(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Resident memory of a process, split by what backs it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resident {
    pub total_mib: f64,
    /// Anonymous pages: the heap, stacks, the allocator's spare memory.
    pub anon_mib: f64,
    /// Pages of mapped files, mostly the binary's own code and data: a
    /// cost every copy of the binary pays once, whatever its load.
    pub file_mib: f64,
}

impl Resident {
    /// From the text of `/proc/<pid>/status`.
    fn from_status(status: &str) -> Self {
        Resident {
            total_mib: field_of(status, "VmRSS:") / 1024.0,
            anon_mib: field_of(status, "RssAnon:") / 1024.0,
            file_mib: field_of(status, "RssFile:") / 1024.0,
        }
    }

    pub fn of(pid: u32) -> Self {
        Self::from_status(
            &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        )
    }
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} MiB (anonymous {:.1}, files {:.1})",
            self.total_mib, self.anon_mib, self.file_mib
        )
    }
}

/// CPU seconds the whole machine has spent busy since boot (every core,
/// every process: user, nice, system, irq, softirq and steal; not idle or
/// iowait). The difference over a phase is the work that phase cost,
/// whichever process did it.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    (at(0) + at(1) + at(2) + at(5) + at(6) + at(7)) / TICKS_PER_SECOND
}

/// Bytes sent over interface `name` since boot, from the text of
/// `/proc/net/dev` (receive fields come first: bytes, packets, errs, drop,
/// fifo, frame, compressed, multicast; then transmit bytes).
fn transmitted_bytes(net_dev: &str, name: &str) -> Option<u64> {
    net_dev.lines().find_map(|line| {
        let (interface, counters) = line.split_once(':')?;
        if interface.trim() != name {
            return None;
        }
        counters.split_whitespace().nth(8)?.parse().ok()
    })
}

/// Bytes the loopback interface has carried since boot. On the test bed
/// every client, proxy and Cassandra node talks over loopback, and each
/// packet is sent once on it, so the difference over a phase is what that
/// phase put on the wire (TCP/IP headers and acknowledgements included).
pub fn loopback_bytes() -> u64 {
    let net_dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    transmitted_bytes(&net_dev, "lo").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callgrind_dump_gives_its_totals() {
        let dump = "events: Ir\nfn=(1) main\n16 5\ntotals: 1234567\n";
        assert_eq!(callgrind_instructions(dump), Some(1_234_567));
        assert_eq!(
            callgrind_instructions("events: Ir\nsummary: 42\n"),
            Some(42)
        );
        assert_eq!(callgrind_instructions("events: Ir\n"), None);
    }

    #[test]
    fn the_transmitted_bytes_of_an_interface_are_read_from_net_dev() {
        let net_dev = "Inter-|   Receive                            |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 8123456   41000    0    0    0     0          0         0  8123999   41000    0    0    0     0       0          0\n  \
eth0:  999 9 0 0 0 0 0 0 777 7 0 0 0 0 0 0\n";
        assert_eq!(transmitted_bytes(net_dev, "lo"), Some(8_123_999));
        assert_eq!(transmitted_bytes(net_dev, "eth0"), Some(777));
        assert_eq!(transmitted_bytes(net_dev, "eth1"), None);
        // Live: sending to ourselves over loopback moves the counter.
        let before = loopback_bytes();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .send_to(&[0u8; 1000], socket.local_addr().unwrap())
            .unwrap();
        assert!(loopback_bytes() >= before + 1000);
    }

    #[test]
    fn resident_memory_is_split_into_anonymous_and_file_pages() {
        let status = "Name:\tproxy\nVmRSS:\t   12288 kB\nRssAnon:\t    8192 kB\nRssFile:\t    4096 kB\nRssShmem:\t       0 kB\n";
        let r = Resident::from_status(status);
        assert_eq!((r.total_mib, r.anon_mib, r.file_mib), (12.0, 8.0, 4.0));
        assert_eq!(r.to_string(), "12.0 MiB (anonymous 8.0, files 4.0)");
        let live = Resident::of(std::process::id());
        assert!(live.anon_mib > 0.0 && live.file_mib > 0.0, "{live}");
    }

    #[test]
    fn this_process_has_spent_cpu_and_memory() {
        // Burn CPU until the tick counter has moved (on a loaded machine
        // 50 ms of wall time could be less than one 10 ms tick of CPU); a
        // counter that never moves fails after 10 s.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while process_cpu_seconds(None) <= 0.0
            && start.elapsed() < std::time::Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
        }
        assert!(x != 1);
        assert!(process_cpu_seconds(None) > 0.0);
        assert!(Resident::of(std::process::id()).total_mib > 0.0);
        assert!(machine_busy_seconds() > 0.0);
    }

    #[test]
    fn system_calls_and_sleeps_of_this_process_are_counted() {
        let before = ProcessCounters::read(None);
        // Ten reads of a file and ten sleeps: each must show in the counters.
        for _ in 0..10 {
            let _ = std::fs::read_to_string("/proc/self/stat");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let after = ProcessCounters::read(None);
        let per = after.per_request_since(&before, 10);
        assert!(per.read_calls >= 1.0, "{per}");
        assert!(per.sleeps >= 1.0, "{per}");
        assert!(per.cpu_us() >= 0.0, "{per}");
    }
}
