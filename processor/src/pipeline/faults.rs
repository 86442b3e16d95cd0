//! Fault injection for the broker tests: environment variables only (never config), read once at
//! start; each names the failure it provokes, and a replica that has one says so in its log.

use std::time::Duration;

/// The faults a replica injects; all off by default.
#[derive(Debug, Clone, Default)]
pub(super) struct Faults {
    /// `TOUCHSTREAM_FAULT_ABORT_EVERY=n`: every n-th transaction that carries input offsets is
    /// aborted instead of committed ([`Self::abort_now`]).
    pub abort_every: Option<u64>,
    /// Transactions with input offsets so far (what `abort_every` counts).
    input_transactions: u64,
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
            input_transactions: 0,
        };
        if faults.any() {
            tracing::warn!(?faults, "fault injection is on (test-only environment variables)");
        }
        faults
    }

    /// Whether to abort the transaction about to commit. Only transactions that carry input
    /// offsets count: after a rewind the channel aggregators re-read their partials and write
    /// their totals again, in transactions of their own once the input is done; aborting every
    /// n-th of those too can abort the same totals again and again, a cycle no real failure keeps
    /// up (seen in CI: 132 aborts, and totals of six windows never committed).
    pub fn abort_now(&mut self, carries_input: bool) -> bool {
        let Some(n) = self.abort_every.filter(|_| carries_input) else { return false };
        self.input_transactions += 1;
        self.input_transactions % n == 0
    }

    fn any(&self) -> bool {
        self.abort_every.is_some() || self.fatal_at.is_some() || self.restore_blind_at.is_some() || !self.commit_delay.is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_transaction_with_input_is_aborted_and_no_other() {
        let mut f = Faults { abort_every: Some(3), ..Faults::default() };
        let pattern: Vec<bool> = [true, false, true, true, false, true, true, true].iter().map(|input| f.abort_now(*input)).collect();
        assert_eq!(pattern, [false, false, false, true, false, false, false, true]);
        assert!(!Faults::default().abort_now(true), "off by default");
    }
}
