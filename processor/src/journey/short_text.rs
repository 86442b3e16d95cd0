//! Short text kept in the state (a touchpoint's event id, the customer's session id): up to 22
//! bytes (a counter, a Snowflake id, most prefixed ids) it is stored in place, longer ones (a
//! UUID) are boxed. The same 24 bytes as a `String` and 8 more than the `Box<str>` it replaces,
//! against a heap block of 24-32 bytes and an allocation per text (when it arrives and on every
//! restore). Read, compared and (de)serialized as its text, so the changelog's bytes do not change.

use std::fmt;
use std::ops::Deref;

const INLINE: usize = 22;

#[derive(Clone)]
pub struct ShortText(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl From<&str> for ShortText {
    fn from(id: &str) -> Self {
        if id.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            ShortText(Repr::Inline { len: id.len() as u8, bytes })
        } else {
            ShortText(Repr::Heap(id.into()))
        }
    }
}

impl Deref for ShortText {
    type Target = str;
    fn deref(&self) -> &str {
        match &self.0 {
            // SAFETY: the bytes are a prefix of a `&str` cut at its own length, so valid UTF-8
            Repr::Inline { len, bytes } => unsafe { std::str::from_utf8_unchecked(&bytes[..*len as usize]) },
            Repr::Heap(s) => s,
        }
    }
}

impl ShortText {
    /// Heap bytes held beyond the 24 in place (for the state-size metric).
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Heap(s) => s.len(),
        }
    }
}

impl PartialEq for ShortText {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl fmt::Debug for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl serde::Serialize for ShortText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ShortText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = ShortText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event id")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ShortText, E> {
                Ok(v.into())
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_in_place_long_ones_boxed_same_text_and_bytes() {
        assert_eq!(std::mem::size_of::<ShortText>(), 24);
        for id in ["", "c3-0", "é-ü-22-bytes-exactly!", "0123456789012345678901", "01234567-89ab-cdef-0123-456789abcdef"] {
            let e = ShortText::from(id);
            assert_eq!(&*e, id);
            assert_eq!(e.heap_bytes(), if id.len() <= INLINE { 0 } else { id.len() });
            let boxed: Box<str> = id.into();
            let (ours, theirs) = (postcard::to_allocvec(&e).unwrap(), postcard::to_allocvec(&boxed).unwrap());
            assert_eq!(ours, theirs, "the changelog bytes of {id:?}");
            assert_eq!(postcard::from_bytes::<ShortText>(&ours).unwrap(), e);
            assert_eq!(serde_json::from_str::<ShortText>(&serde_json::to_string(&e).unwrap()).unwrap(), e);
            assert_eq!(format!("{e:?}"), format!("{id:?}"));
        }
    }
}
