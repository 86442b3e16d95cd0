//! Fault injection for the broker tests: environment variables only (never config), read once at
//! start; each names the failure it provokes, and a replica that has one says so in its log.

use std::time::Duration;

/// The faults a replica injects; all off by default.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Faults {
    /// `TOUCHSTREAM_FAULT_ABORT_EVERY=n`: every n-th transaction is aborted instead of committed.
    pub abort_every: Option<u64>,
    /// `TOUCHSTREAM_FAULT_FATAL_AT=n`: a fatal producer error before the n-th commit.
    pub fatal_at: Option<u64>,
    /// `TOUCHSTREAM_FAULT_RESTORE_BLIND=n`: the n-th restore attempt sees nothing.
    pub restore_blind_at: Option<u64>,
    /// `TOUCHSTREAM_FAULT_COMMIT_DELAY_MS=ms`: each commit waits this long on its thread before
    /// it starts, so the loop reads and computes the next batch while it is on its way (the
    /// window in which a rebalance finds outputs in memory).
    pub commit_delay: Duration,
}

impl Faults {
    pub fn from_env() -> Faults {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).filter(|n| *n > 0);
        let faults = Faults {
            abort_every: var("TOUCHSTREAM_FAULT_ABORT_EVERY"),
            fatal_at: var("TOUCHSTREAM_FAULT_FATAL_AT"),
            restore_blind_at: var("TOUCHSTREAM_FAULT_RESTORE_BLIND"),
            commit_delay: Duration::from_millis(var("TOUCHSTREAM_FAULT_COMMIT_DELAY_MS").unwrap_or(0)),
        };
        if faults.any() {
            tracing::warn!(?faults, "fault injection is on (test-only environment variables)");
        }
        faults
    }

    fn any(&self) -> bool {
        self.abort_every.is_some() || self.fatal_at.is_some() || self.restore_blind_at.is_some() || !self.commit_delay.is_zero()
    }
}
