//! Erasure of one customer (a data-subject request): everything the partition holds about them
//! goes — journey, cart and its pending alert, model state, remembered event ids — and the
//! changelog and the scores topic get tombstones in the same transaction as the request's offset.

use super::*;

/// What an erasure removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    /// The partition held state for the customer.
    pub found: bool,
    pub touchpoints: usize,
    /// An open cart (its pending alert is cancelled with it).
    pub open_cart: bool,
    pub model_state: bool,
}

impl PartitionEngine {
    /// Forgets `customer` and records that the erasure topic's record at `offset` is applied.
    /// Later events of the customer start a fresh state.
    pub fn erase(&mut self, customer: &str, offset: i64) -> Erased {
        // events of the customer waiting for the step model are scored first, so nothing is
        // written for them after the erasure
        self.flush_for(customer);
        self.erasure_offset = self.erasure_offset.max(offset + 1);
        // an erasure is not in the input: the commit that applies it is a snapshot, so no replay
        // of the input ever crosses it (and brings back what it erased)
        self.snap.force = true;
        let key: Box<str> = customer.into();
        // the scores topic is tombstoned whether or not a score was written: it is idempotent
        self.score_tombstones.push(key.clone());
        if let Some(sh) = self.scoring.as_mut().and_then(|s| s.shadow.as_mut()) {
            sh.forget(customer);
        }
        let Some(c) = self.customers.remove(customer) else { return Erased::default() };
        self.forgotten.push(key);
        Erased { found: true, touchpoints: c.touchpoints.len(), open_cart: c.cart.is_some(), model_state: c.model.is_some() }
    }

    /// The next offset of this partition of the erasure topic to apply.
    pub fn erasure_offset(&self) -> i64 {
        self.erasure_offset
    }

    /// Customers whose scores record is to be tombstoned since the last call.
    pub fn drain_score_tombstones(&mut self, out: &mut Vec<Box<str>>) {
        out.append(&mut self.score_tombstones);
    }
}
