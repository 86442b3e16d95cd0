//! The partition's models changed under it: a reload swaps them, a promotion hands the shadow's
//! candidate over; and what the shadow measured. Either is a snapshot (a replay of the input
//! would run the new models on events the old ones saw).

use super::*;

impl PartitionEngine {
    /// Swaps the models (a reload): pending events finish on the old ones first. When the step
    /// model's hidden size changes, every hidden state is reset; returns how many were.
    pub fn set_models(&mut self, models: Option<Arc<ModelSet>>, candidate: Option<Arc<ModelSet>>) -> Result<usize, String> {
        let next = models.as_ref().map(|m| Scoring::new(m.clone(), candidate.clone())).transpose()?;
        self.flush();
        self.collect_conversion_scores();
        let old_hidden = self.scoring.as_ref().map(|s| s.set.step.hidden);
        let new_hidden = models.as_ref().map(|m| m.step.hidden);
        let mut reset = 0;
        if old_hidden != new_hidden {
            for (key, c) in self.customers.iter_mut() {
                if c.model.as_ref().is_some_and(|m| Some(m.hidden().len()) != new_hidden) {
                    c.model = None;
                    reset += 1;
                    if !c.queued {
                        c.queued = true;
                        c.changed_idx = self.changed.len() as u32;
                        self.changed.push(key.clone());
                    }
                }
            }
        }
        self.cfg.models = models;
        self.cfg.candidate = candidate;
        self.windows.deep = next.is_some();
        self.policy = policy_for(&self.cfg, next.as_ref(), self.partition);
        self.scoring = next;
        self.snap.force = true; // a replay would run the new models on events the old ones saw
        Ok(reset)
    }

    /// Swaps the candidate models in at this point of the partition ([`Scoring::promote`]); every
    /// customer with model state goes to the changelog again. Returns the hidden states reset
    /// (customers the candidate had not seen), or None without a candidate.
    pub fn promote(&mut self) -> Option<usize> {
        self.flush();
        let scoring = self.scoring.as_mut()?;
        let reset = scoring.promote(&mut self.customers)?;
        self.cfg.models = Some(scoring.set.clone());
        self.cfg.candidate = scoring.shadow.as_ref().map(|s| s.set.clone());
        self.policy = policy_for(&self.cfg, self.scoring.as_ref(), self.partition);
        let keys: Vec<Box<str>> = self.customers.keys().cloned().collect();
        for key in keys {
            self.mark_changed(&key);
        }
        self.snap.force = true;
        Some(reset)
    }

    /// What the shadow measured since the last call (none without a candidate).
    pub fn take_shadow(&mut self) -> Option<shadow::ShadowCounts> {
        self.scoring.as_mut()?.shadow.as_mut().map(|s| s.take())
    }

    /// Predictions of the shadow waiting for their outcome.
    pub fn shadow_open_predictions(&self) -> usize {
        self.scoring.as_ref().and_then(|s| s.shadow.as_ref()).map_or(0, |s| s.open_predictions())
    }
}
