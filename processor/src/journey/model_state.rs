//! The step model's per-customer state. Its hidden state and re-check values share one
//! allocation (with the box, two heap blocks per customer instead of three: ~48 bytes less).

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::time::Millis;

/// The step model's state after the customer's latest event: its hidden state, re-check values
/// and scores.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "StoredModelState")]
pub struct ModelState {
    /// The hidden state, then the re-check values.
    values: Box<[f32]>,
    hidden: u32,
    /// P(purchase), P(abandon), expected value after the latest event.
    pub scores: [f32; 3],
    /// Event time of the event the scores belong to.
    pub scored_ts: Millis,
    /// The scores last written to the scores topic.
    pub written: Option<[f32; 3]>,
}

impl ModelState {
    /// No hidden state yet ([`Self::set`] gives it one).
    pub fn empty() -> Self {
        ModelState { values: Box::default(), hidden: 0, scores: [0.0; 3], scored_ts: Millis::MIN, written: None }
    }

    pub fn hidden(&self) -> &[f32] {
        &self.values[..self.hidden as usize]
    }

    /// With a re-check head: P(abandon) after each inactivity of the model's schedule.
    pub fn checks(&self) -> &[f32] {
        &self.values[self.hidden as usize..]
    }

    /// Sets the hidden state and the re-check values (in place when their sizes stay).
    pub fn set(&mut self, hidden: &[f32], checks: &[f32]) {
        if self.values.len() != hidden.len() + checks.len() {
            self.values = vec![0.0; hidden.len() + checks.len()].into();
        }
        self.hidden = hidden.len() as u32;
        let (h, c) = self.values.split_at_mut(hidden.len());
        h.copy_from_slice(hidden);
        c.copy_from_slice(checks);
    }
}

/// The serde form (changelog versions 1 to 3, JSON): the fields of earlier versions, in order.
#[derive(Deserialize)]
struct StoredModelState {
    hidden: Vec<f32>,
    scores: [f32; 3],
    #[serde(default)]
    checks: Vec<f32>,
    scored_ts: Millis,
    #[serde(default)]
    written: Option<[f32; 3]>,
}

impl From<StoredModelState> for ModelState {
    fn from(s: StoredModelState) -> Self {
        let mut m = ModelState { scores: s.scores, scored_ts: s.scored_ts, written: s.written, ..ModelState::empty() };
        m.set(&s.hidden, &s.checks);
        m
    }
}

impl Serialize for ModelState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ModelState", 5)?;
        st.serialize_field("hidden", self.hidden())?;
        st.serialize_field("scores", &self.scores)?;
        st.serialize_field("checks", self.checks())?;
        st.serialize_field("scored_ts", &self.scored_ts)?;
        st.serialize_field("written", &self.written)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reads_and_writes_the_fields_of_earlier_versions() {
        let mut m = ModelState::empty();
        m.set(&[1.0, 2.0, 3.0], &[0.25, 0.5]);
        m.scores = [0.1, 0.2, 30.0];
        m.written = Some([0.1, 0.2, 29.0]);
        m.scored_ts = 77;
        assert_eq!((m.hidden(), m.checks()), (&[1.0, 2.0, 3.0][..], &[0.25, 0.5][..]));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["hidden"], serde_json::json!([1.0, 2.0, 3.0]));
        assert_eq!(json["checks"], serde_json::json!([0.25, 0.5]));
        assert_eq!(serde_json::from_value::<ModelState>(json).unwrap(), m);
        // the binary form is the derived one of earlier versions
        #[derive(Serialize)]
        struct Earlier {
            hidden: Vec<f32>,
            scores: [f32; 3],
            checks: Vec<f32>,
            scored_ts: Millis,
            written: Option<[f32; 3]>,
        }
        let earlier = Earlier { hidden: vec![1.0, 2.0, 3.0], scores: m.scores, checks: vec![0.25, 0.5], scored_ts: 77, written: m.written };
        assert_eq!(postcard::to_allocvec(&m).unwrap(), postcard::to_allocvec(&earlier).unwrap());
        assert_eq!(postcard::from_bytes::<ModelState>(&postcard::to_allocvec(&earlier).unwrap()).unwrap(), m);
        // a state of another size is replaced, not copied into
        m.set(&[4.0; 5], &[]);
        assert_eq!((m.hidden(), m.checks().len()), (&[4.0; 5][..], 0));
    }
}
