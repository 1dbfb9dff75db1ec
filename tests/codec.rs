//! Typed keys and values through serde (feature `serde`).
#![cfg(feature = "serde")]

use mapkv::codec::{Codec, Encode, Postcard};
use mapkv::{Error, Store};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Order {
    id: u64,
    items: Vec<(String, u32)>,
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct OrderKey {
    customer: u32,
    number: u64,
}

fn order(i: u64) -> Order {
    Order {
        id: i,
        items: (0..i % 5).map(|j| (format!("item{j}"), j as u32)).collect(),
        note: (i % 3 == 0).then(|| format!("note {i}")),
    }
}

#[test]
fn typed_keys_and_values_round_trip_through_a_transaction_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.kv");
    let store = Store::open(&path).unwrap();
    let key = |i: u64| OrderKey {
        customer: (i % 7) as u32,
        number: i,
    };
    let mut tx = store.begin_write().unwrap();
    for i in 0..500 {
        tx.put_as::<Postcard, _, _>(&key(i), &order(i)).unwrap();
    }
    // The transaction reads its own typed writes, and deletes by key.
    assert_eq!(
        tx.get_as::<Postcard, _, Order>(&key(9)).unwrap(),
        Some(order(9))
    );
    assert!(tx.delete_as::<Postcard, _>(&key(10)).unwrap());
    tx.commit().unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    let snap = store.begin_read().unwrap();
    for i in 0..500 {
        let got: Option<Order> = snap.get_as::<Postcard, _, _>(&key(i)).unwrap();
        assert_eq!(got, (i != 10).then(|| order(i)), "order {i}");
    }
    // The bytes are the codec's: a plain get of the encoded key finds them.
    let raw = snap
        .get(<Postcard as Encode<OrderKey>>::encode(&key(3)).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(<Postcard as Codec<Order>>::decode(raw).unwrap(), order(3));
}

#[test]
fn a_value_of_another_type_is_a_codec_error_not_a_wrong_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("mixed.kv")).unwrap();
    let mut tx = store.begin_write().unwrap();
    tx.put_as::<Postcard, _, _>("k", &1u8).unwrap();
    tx.commit().unwrap();
    let snap = store.begin_read().unwrap();
    match snap.get_as::<Postcard, _, Order>("k") {
        Err(e @ Error::Codec { .. }) => assert!(e.to_string().contains("decode"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(snap.get_as::<Postcard, _, u8>("k").unwrap(), Some(1));
    assert_eq!(snap.get_as::<Postcard, _, u8>("absent").unwrap(), None);
}
