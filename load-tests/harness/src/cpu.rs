//! CPU time from /proc: the machine's busy time and a process's own, so a run shows where the
//! machine's cores went (the measured process against everything else, the broker included).

/// Clock ticks per second of /proc's counters (USER_HZ; 100 on every Linux build in use).
const TICKS_PER_S: f64 = 100.0;

/// Seconds all cores spent busy (everything but idle and iowait) since boot.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine(stat.lines().next()?)
}

/// User + system seconds of a process (all its threads) so far.
pub fn process_seconds(pid: u32) -> Option<f64> {
    parse_process(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_machine(cpu_line: &str) -> Option<f64> {
    let mut fields = cpu_line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let total: u64 = v.iter().take(8).sum();
    Some((total - v.get(3)? - v.get(4).copied().unwrap_or(0)) as f64 / TICKS_PER_S)
}

fn parse_process(stat: &str) -> Option<f64> {
    // the command name may hold spaces: fields count from after its closing parenthesis
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) as f64 / TICKS_PER_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_lines() {
        let m = parse_machine("cpu  100 5 50 1000 20 3 2 0 0 0").unwrap();
        assert!((m - 1.60).abs() < 1e-9, "{m}");
        let p = parse_process("4242 (tokio rt) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 25 0").unwrap();
        assert!((p - 2.90).abs() < 1e-9, "{p}");
        assert!(machine_busy_seconds().is_some());
        assert!(process_seconds(std::process::id()).is_some());
    }
}
