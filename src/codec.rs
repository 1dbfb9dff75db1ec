//! Typed keys and values through serde (feature `serde`): an [`Encode`]
//! turns a key into bytes, a [`Codec`] a value into bytes and back, and the `*_as` methods of
//! [`ReadTxn`] and [`WriteTxn`] use one. [`Postcard`] is the codec
//! provided. A key is found by its bytes, so a key codec must encode equal
//! keys to equal bytes, as postcard does.
//!
//! ```
//! use mapkv::codec::Postcard;
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct User { name: String, logins: u32 }
//!
//! # let dir = tempfile::tempdir()?;
//! let store = mapkv::Store::open(dir.path().join("users.kv"))?;
//! let mut tx = store.begin_write()?;
//! tx.put_as::<Postcard, _, _>(&7u64, &User { name: "ada".into(), logins: 3 })?;
//! tx.commit()?;
//! let snap = store.begin_read()?;
//! let user: Option<User> = snap.get_as::<Postcard, _, _>(&7u64)?;
//! assert_eq!(user, Some(User { name: "ada".into(), logins: 3 }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};
use crate::txn::{ReadTxn, WriteTxn};

/// Encodes values of `T` to bytes (all a key needs).
pub trait Encode<T: ?Sized> {
    /// The bytes of `value`.
    ///
    /// # Errors
    /// `Codec` if `value` cannot be encoded.
    fn encode(value: &T) -> Result<Vec<u8>>;
}

/// Encodes values of `T` to bytes and decodes them back (what a value
/// needs).
pub trait Codec<T>: Encode<T> {
    /// The value `bytes` encode.
    ///
    /// # Errors
    /// `Codec` if `bytes` are not the encoding of a `T`.
    fn decode(bytes: &[u8]) -> Result<T>;
}

/// postcard's compact, deterministic encoding of any serde type.
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

impl<T: Serialize + ?Sized> Encode<T> for Postcard {
    fn encode(value: &T) -> Result<Vec<u8>> {
        postcard::to_stdvec(value).map_err(|e| Error::Codec {
            what: format!("encode: {e}"),
        })
    }
}

impl<T: Serialize + DeserializeOwned> Codec<T> for Postcard {
    fn decode(bytes: &[u8]) -> Result<T> {
        postcard::from_bytes(bytes).map_err(|e| Error::Codec {
            what: format!("decode a value of {} bytes: {e}", bytes.len()),
        })
    }
}

/// A value read by a `get`, decoded with `C`.
fn decoded<C: Codec<V>, V>(value: Option<&[u8]>) -> Result<Option<V>> {
    value.map(C::decode).transpose()
}

impl ReadTxn<'_> {
    /// The value of `key` decoded with codec `C` (both encoded with it).
    ///
    /// # Errors
    /// As [`get`](Self::get); `Codec` if the key cannot be encoded or the
    /// value is not an encoding of `V`.
    pub fn get_as<C, K, V>(&self, key: &K) -> Result<Option<V>>
    where
        C: Encode<K> + Codec<V>,
        K: ?Sized,
    {
        decoded::<C, V>(self.get(<C as Encode<K>>::encode(key)?)?)
    }
}

impl WriteTxn<'_> {
    /// Sets `key` to `value`, both encoded with codec `C`.
    ///
    /// # Errors
    /// As [`put`](Self::put); `Codec` if either cannot be encoded.
    pub fn put_as<C, K, V>(&mut self, key: &K, value: &V) -> Result<()>
    where
        C: Encode<K> + Encode<V>,
        K: ?Sized,
        V: ?Sized,
    {
        let key = <C as Encode<K>>::encode(key)?;
        let value = <C as Encode<V>>::encode(value)?;
        self.put(key, value)
    }

    /// The value of `key` as this transaction sees it, decoded with `C`.
    ///
    /// ```
    /// use mapkv::codec::Postcard;
    /// # let dir = tempfile::tempdir()?;
    /// # let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// let mut tx = store.begin_write()?;
    /// tx.put_as::<Postcard, _, _>("count", &3u32)?;
    /// assert_eq!(tx.get_as::<Postcard, _, u32>("count")?, Some(3));
    /// assert!(tx.delete_as::<Postcard, _>("count")?);
    /// assert_eq!(tx.get_as::<Postcard, _, u32>("count")?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`get`](Self::get); `Codec` as [`ReadTxn::get_as`].
    pub fn get_as<C, K, V>(&self, key: &K) -> Result<Option<V>>
    where
        C: Encode<K> + Codec<V>,
        K: ?Sized,
    {
        decoded::<C, V>(self.get(<C as Encode<K>>::encode(key)?)?)
    }

    /// Removes `key` (encoded with `C`); whether it had a value.
    ///
    /// # Errors
    /// As [`delete`](Self::delete); `Codec` if the key cannot be encoded.
    pub fn delete_as<C, K>(&mut self, key: &K) -> Result<bool>
    where
        C: Encode<K>,
        K: ?Sized,
    {
        self.delete(C::encode(key)?)
    }
}
