//! Campaign names, one allocation per name and partition ([`Campaigns`]), held by touchpoints
//! through a thin pointer ([`Campaign`], 8 bytes; an `Arc<str>` takes 16). Journeys name few
//! campaigns, repeated across customers: per customer and campaign, a name of its own cost about
//! 48 bytes of heap.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use foldhash::fast::RandomState;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A shared campaign name. Compared, hashed and (de)serialized as its text.
#[derive(Clone)]
pub struct Campaign(Arc<Box<str>>);

impl Campaign {
    /// The same allocation as `other`.
    pub fn shares(&self, other: &Campaign) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Heap bytes of the name, divided among its holders (for the state-size metric).
    pub fn heap_share(&self) -> usize {
        (self.0.len() + 48) / Arc::strong_count(&self.0)
    }
}

impl From<&str> for Campaign {
    fn from(name: &str) -> Self {
        Campaign(Arc::new(name.into()))
    }
}

impl Deref for Campaign {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Campaign {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Campaign {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Campaign {}

impl Hash for Campaign {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl fmt::Debug for Campaign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Campaign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl Serialize for Campaign {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for Campaign {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
        Ok(Campaign::from(&*name))
    }
}

/// The campaign names a partition's touchpoints use. A name no touchpoint holds any more is
/// dropped when the set next sweeps (once it has doubled since the last sweep), so the set stays
/// within twice the names in use.
#[derive(Debug, Default)]
pub struct Campaigns {
    names: HashSet<Campaign, RandomState>,
    sweep_at: usize,
}

/// Fewest names at which the set sweeps.
const MIN_SWEEP: usize = 1024;

impl Campaigns {
    /// The shared name `name`.
    pub fn get(&mut self, name: &str) -> Campaign {
        if let Some(c) = self.names.get(name) {
            return c.clone();
        }
        if self.names.len() >= self.sweep_at.max(MIN_SWEEP) {
            self.names.retain(|c| Arc::strong_count(&c.0) > 1);
            self.sweep_at = 2 * self.names.len();
        }
        let c = Campaign::from(name);
        self.names.insert(c.clone());
        c
    }

    /// Replaces `c` by the shared name of its text (a restored touchpoint's).
    pub fn share(&mut self, c: &mut Campaign) {
        let shared = self.get(c);
        *c = shared;
    }

    /// Names held (in use or not yet swept).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_allocation_and_unused_names_are_swept() {
        let mut names = Campaigns::default();
        let a = names.get("spring");
        let b = names.get("spring");
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let mut restored = Campaign::from("spring");
        names.share(&mut restored);
        assert!(Arc::ptr_eq(&a.0, &restored.0));
        // names nobody holds go at the next sweep; held ones stay
        for i in 1..MIN_SWEEP {
            drop(names.get(&format!("once-{i}")));
        }
        assert_eq!(names.len(), MIN_SWEEP);
        let c = names.get("after");
        assert_eq!(names.len(), 2, "spring (held) and after");
        assert!(Arc::ptr_eq(&names.get("spring").0, &a.0));
        assert_eq!((&*c, format!("{c:?}")), ("after", "\"after\"".to_string()));
    }
}
