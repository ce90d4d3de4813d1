//! Canonical JSON written straight from a value's `Serialize`, without
//! building a `serde_json::Value` first: the fast path of
//! [`super::canonical::is_canonical_form_of`]. Each object's members are
//! written to one buffer and copied out in key order when it ends.
//!
//! Anything this writer is not sure to write exactly as the `Value` path
//! does (a float, a map key that is not a string or an integer, a key twice)
//! is an error, and the caller falls back to the `Value` path.

use std::borrow::Cow;

use serde::ser::{self, Serialize};

use super::canonical::{key_order, write_string};

/// Why the direct writer gave up (the caller takes the `Value` path).
#[derive(Debug)]
pub(crate) struct GaveUp;

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not written directly")
    }
}

impl std::error::Error for GaveUp {}

impl ser::Error for GaveUp {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        GaveUp
    }
}

/// `value` as canonical JSON, appended to `out`.
pub(crate) fn write<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), GaveUp> {
    value.serialize(Direct { out })
}

struct Direct<'a> {
    out: &'a mut Vec<u8>,
}

fn int(out: &mut Vec<u8>, v: impl std::fmt::Display) -> Result<(), GaveUp> {
    use std::io::Write as _;
    write!(out, "{v}").map_err(|_| GaveUp)
}

impl<'a> ser::Serializer for Direct<'a> {
    type Ok = ();
    type Error = GaveUp;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Obj<'a>;
    type SerializeStruct = Obj<'a>;
    type SerializeStructVariant = Obj<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), GaveUp> {
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), GaveUp> {
        int(self.out, v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), GaveUp> {
        int(self.out, v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), GaveUp> {
        int(self.out, v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), GaveUp> {
        int(self.out, v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), GaveUp> {
        int(self.out, v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), GaveUp> {
        int(self.out, v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), GaveUp> {
        int(self.out, v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), GaveUp> {
        int(self.out, v)
    }
    fn serialize_f32(self, _: f32) -> Result<(), GaveUp> {
        Err(GaveUp)
    }
    fn serialize_f64(self, _: f64) -> Result<(), GaveUp> {
        Err(GaveUp)
    }
    fn serialize_char(self, v: char) -> Result<(), GaveUp> {
        write_string(v.encode_utf8(&mut [0; 4]), self.out);
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), GaveUp> {
        write_string(v, self.out);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), GaveUp> {
        Err(GaveUp)
    }
    fn serialize_none(self) -> Result<(), GaveUp> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), GaveUp> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), GaveUp> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), GaveUp> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), GaveUp> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), GaveUp> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), GaveUp> {
        self.out.push(b'{');
        write_string(variant, self.out);
        self.out.push(b':');
        value.serialize(Direct { out: self.out })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>, GaveUp> {
        self.out.push(b'[');
        Ok(Seq { out: self.out, first: true, variant: false })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, GaveUp> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>, GaveUp> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Seq<'a>, GaveUp> {
        self.out.push(b'{');
        write_string(variant, self.out);
        self.out.extend_from_slice(b":[");
        Ok(Seq { out: self.out, first: true, variant: true })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Obj<'a>, GaveUp> {
        Ok(Obj::new(self.out, None))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Obj<'a>, GaveUp> {
        Ok(Obj::new(self.out, None))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Obj<'a>, GaveUp> {
        Ok(Obj::new(self.out, Some(variant)))
    }
}

struct Seq<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// Inside `{"variant":[…]}`.
    variant: bool,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GaveUp> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Direct { out: self.out })
    }

    fn close(self) -> Result<(), GaveUp> {
        self.out.extend_from_slice(if self.variant { b"]}" } else { b"]" });
        Ok(())
    }
}

/// The four sequence traits differ only in their method's name.
macro_rules! sequence {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Seq<'_> {
            type Ok = ();
            type Error = GaveUp;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GaveUp> {
                self.element(value)
            }
            fn end(self) -> Result<(), GaveUp> {
                self.close()
            }
        }
    )*};
}

sequence!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// Each member of an object: its key and where its value is in the buffer.
type Members = Vec<Member>;

struct Member {
    key: Cow<'static, str>,
    /// An ASCII key's first eight bytes, big-endian, zero-padded: ordered
    /// as the keys are where they differ (checking every record of a log
    /// sorts millions of objects' members, and comparing the keys
    /// themselves was a twentieth of the time).
    rank: Option<u64>,
    start: usize,
    end: usize,
}

impl Member {
    fn order(&self, other: &Member) -> std::cmp::Ordering {
        match (self.rank, other.rank) {
            (Some(a), Some(b)) if a != b => a.cmp(&b),
            _ => key_order(&self.key, &other.key),
        }
    }
}

thread_local! {
    /// The buffers of objects that ended, for the next ones: checking every
    /// record of a log writes millions of objects, and allocating (and
    /// growing) two buffers for each was a fifth of the time.
    static SPARE: std::cell::RefCell<Vec<(Vec<u8>, Members)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Spare buffers kept per thread (objects nest a few levels deep), and the
/// largest buffer kept (a huge object's is freed).
const SPARES: usize = 16;
pub(crate) const SPARE_BYTES: usize = 1 << 20;

/// An object's members, written to `buf` as they come and copied to
/// `out` in key order at the end.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    /// Inside `{"variant":{…}}`.
    variant: Option<&'static str>,
    buf: Vec<u8>,
    members: Members,
    /// The key of the member whose value comes next (a map's).
    key: Option<String>,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut Vec<u8>, variant: Option<&'static str>) -> Self {
        let (buf, members) = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
        Self { out, variant, buf, members, key: None }
    }

    /// Hand the buffers back, emptied, for the next object.
    fn recycle(mut buf: Vec<u8>, mut members: Members) {
        if buf.capacity() > SPARE_BYTES {
            return;
        }
        buf.clear();
        members.clear();
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARES {
                spare.push((buf, members));
            }
        });
    }

    fn member<T: Serialize + ?Sized>(&mut self, key: Cow<'static, str>, value: &T) -> Result<(), GaveUp> {
        let start = self.buf.len();
        value.serialize(Direct { out: &mut self.buf })?;
        let rank = key.is_ascii().then(|| {
            let mut first = [0; 8];
            let n = key.len().min(8);
            first[..n].copy_from_slice(&key.as_bytes()[..n]);
            u64::from_be_bytes(first)
        });
        self.members.push(Member { key, rank, start, end: self.buf.len() });
        Ok(())
    }

    fn close(mut self) -> Result<(), GaveUp> {
        let increasing = |m: &Members| m.windows(2).all(|w| w[0].order(&w[1]).is_lt());
        if !increasing(&self.members) {
            self.members.sort_by(Member::order);
            // A key twice.
            if !increasing(&self.members) {
                return Err(GaveUp);
            }
        }
        if let Some(v) = self.variant {
            self.out.push(b'{');
            write_string(v, self.out);
            self.out.push(b':');
        }
        self.out.push(b'{');
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_string(&m.key, self.out);
            self.out.push(b':');
            self.out.extend_from_slice(&self.buf[m.start..m.end]);
        }
        self.out.push(b'}');
        if self.variant.is_some() {
            self.out.push(b'}');
        }
        Self::recycle(self.buf, self.members);
        Ok(())
    }
}

/// A struct and a struct variant's members alike.
macro_rules! members {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Obj<'_> {
            type Ok = ();
            type Error = GaveUp;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), GaveUp> {
                self.member(Cow::Borrowed(key), value)
            }
            fn end(self) -> Result<(), GaveUp> {
                self.close()
            }
        }
    )*};
}

members!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for Obj<'_> {
    type Ok = ();
    type Error = GaveUp;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), GaveUp> {
        // Only a string key is taken here; anything else goes the `Value` way.
        let v = serde_json::to_value(key).map_err(|_| GaveUp)?;
        match v {
            serde_json::Value::String(s) => self.key = Some(s),
            _ => return Err(GaveUp),
        }
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GaveUp> {
        let key = self.key.take().ok_or(GaveUp)?;
        self.member(Cow::Owned(key), value)
    }
    fn end(self) -> Result<(), GaveUp> {
        self.close()
    }
}
