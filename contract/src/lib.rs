//! What the processor (`touchstream`) and the journey simulator (`touchstream-sim`) share, so that
//! neither re-declares it: the input contract's vocabularies ([`EventType`], [`Channel`]) in one
//! order (their indices are feature positions of the models) and the layering of TOML documents
//! (the processor's config layers, the simulator's world files over its default world).

use std::borrow::Cow;
use std::fmt;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? } fallback $fallback:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const COUNT: usize = Self::ALL.len();

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a wire name; anything unknown is kept as the fallback.
            pub fn parse(text: &str) -> $name {
                match text { $($text => $name::$variant,)+ _ => $name::$fallback }
            }

            /// Parses a wire name strictly.
            pub fn from_wire(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }

            #[inline]
            pub fn index(self) -> usize { self as usize }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.as_str()) }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = Cow::<'de, str>::deserialize(d)?;
                Ok($name::parse(&text))
            }
        }
    };
}

wire_enum! {
    /// What happened. Unknown types are kept as `other`.
    EventType {
        Impression => "impression",
        Click => "click",
        EmailOpen => "email_open",
        EmailClick => "email_click",
        PageView => "page_view",
        ProductView => "product_view",
        Search => "search",
        CartAdd => "cart_add",
        CartRemove => "cart_remove",
        CheckoutStart => "checkout_start",
        Purchase => "purchase",
        Other => "other",
    } fallback Other
}

wire_enum! {
    /// Marketing channel. Unknown channels are kept as `other`.
    Channel {
        PaidSearch => "paid_search",
        OrganicSearch => "organic_search",
        PaidSocial => "paid_social",
        OrganicSocial => "organic_social",
        Email => "email",
        Display => "display",
        Affiliate => "affiliate",
        Referral => "referral",
        Direct => "direct",
        Sms => "sms",
        Push => "push",
        Other => "other",
    } fallback Other
}

impl EventType {
    /// Marketing touchpoints: the events that are credited for conversions. They must carry a channel.
    #[inline]
    pub fn is_touchpoint(self) -> bool {
        matches!(self, EventType::Impression | EventType::Click | EventType::EmailOpen | EventType::EmailClick)
    }

    /// Index of a touchpoint type (impression 0, click 1, email_open 2, email_click 3).
    #[inline]
    pub fn touch_index(self) -> usize {
        debug_assert!(self.is_touchpoint());
        self as usize
    }
}

/// Lays `over` onto `base`: tables merge key by key, anything else is replaced.
pub fn merge_toml(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_toml(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_and_unknown_names_fall_back() {
        for &c in Channel::ALL {
            assert_eq!(Channel::from_wire(c.as_str()), Some(c));
        }
        for &t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), t);
        }
        assert_eq!(Channel::parse("tiktok"), Channel::Other);
        assert_eq!(EventType::from_wire("tiktok"), None);
        assert_eq!((Channel::COUNT, EventType::COUNT), (12, 12));
        assert_eq!(EventType::ALL.iter().filter(|t| t.is_touchpoint()).map(|t| t.touch_index()).collect::<Vec<_>>(), [0, 1, 2, 3]);
    }

    #[test]
    fn tables_merge_key_by_key() {
        let mut base: toml::Value = toml::from_str("a = 1\n[t]\nx = 1\ny = 2\n").unwrap();
        merge_toml(&mut base, toml::from_str("[t]\ny = 3\nz = 4\n").unwrap());
        assert_eq!(base, toml::from_str::<toml::Value>("a = 1\n[t]\nx = 1\ny = 3\nz = 4\n").unwrap());
    }
}
