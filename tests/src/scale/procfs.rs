//! What `/proc` says about a process and the machine: resident memory, CPU
//! time, and how busy the CPUs were.

use std::{fs, io};

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading /proc/{pid}/{file}")]
    Read {
        pid: u32,
        file: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("/proc/{pid}/{file} has no {field}")]
    Field {
        pid: u32,
        file: &'static str,
        field: &'static str,
    },
}

fn read(pid: u32, file: &'static str) -> Result<String, ProcError> {
    fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| ProcError::Read { pid, file, source })
}

fn status_kb(pid: u32, field: &'static str) -> Result<u64, ProcError> {
    let text = read(pid, "status")?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or(ProcError::Field {
            pid,
            file: "status",
            field,
        })
}

/// Resident memory now (`VmRSS`), KiB.
pub fn rss_kb(pid: u32) -> Result<u64, ProcError> {
    status_kb(pid, "VmRSS")
}

/// The most resident memory so far (`VmHWM`), KiB.
pub fn peak_rss_kb(pid: u32) -> Result<u64, ProcError> {
    status_kb(pid, "VmHWM")
}

/// Clock ticks per second of `/proc` CPU times.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds of every thread of `pid` so far.
pub fn cpu_secs(pid: u32) -> Result<f64, ProcError> {
    let text = read(pid, "stat")?;
    // The command name may hold spaces and parentheses: fields start after
    // the last `)`. utime and stime are fields 14 and 15, so the 12th and
    // 13th after it.
    let field = |n: usize| -> Option<u64> { text.rsplit_once(')')?.1.split_whitespace().nth(n)?.parse().ok() };
    let (Some(utime), Some(stime)) = (field(11), field(12)) else {
        return Err(ProcError::Field {
            pid,
            file: "stat",
            field: "utime and stime",
        });
    };
    Ok((utime + stime) as f64 / ticks_per_sec())
}

/// CPU seconds the whole machine spent busy (user, nice, system, irq,
/// softirq, steal) so far, over every CPU.
pub fn machine_busy_secs() -> f64 {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    busy as f64 / ticks_per_sec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id();
        assert!(rss_kb(me).expect("rss") > 0);
        assert!(peak_rss_kb(me).expect("hwm") >= rss_kb(me).expect("rss") / 2);
        // Busy until the CPU time shows (clock ticks are coarse), bounded.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_secs(me).expect("cpu") == 0.0 && start.elapsed() < std::time::Duration::from_secs(5) {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(cpu_secs(me).expect("cpu") > 0.0);
        assert!(machine_busy_secs() > 0.0);
    }

    #[test]
    fn a_process_that_is_gone_is_an_error() {
        assert!(rss_kb(u32::MAX).is_err());
        assert!(cpu_secs(u32::MAX).is_err());
    }
}
