//! The replicated key-value state machine and the way its answers reach clients.

use crate::proto::{self, Status};
use crate::server::Outbox;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use indexmap::map::RawEntryApiV1;
use indexmap::IndexMap;
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::paxos::Cookie;
use rsl_engine::runtime::{ResponseCode, StateMachine};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
/// Where the answer to a cookie goes: a client connection and its request id. Answering never
/// blocks (the execute thread answers); the connection bounds how many answers it waits for.
#[derive(Default)]
pub struct Clients {
    next_cookie: AtomicU64,
    waiting: Mutex<HashMap<Cookie, (Arc<Outbox>, u64), CookieHash>>,
}

type CookieHash = BuildHasherDefault<CookieHasher>;

/// Cookies are this process's own counter, never a client's choice, so a multiplicative hash
/// spreads them well enough and cannot be steered into collisions; SipHash cost a noticeable
/// share of the execute thread.
#[derive(Default)]
struct CookieHasher(u64);

impl Hasher for CookieHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.write_u64(u64::from(b)));
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: hashbrown takes the top 7 bits as a tag and the low ones as the
        // slot, and the golden-ratio multiplier mixes the counter into both.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Clients {
    pub fn register(&self, conn: &Arc<Outbox>, id: u64) -> Cookie {
        let cookie = self.next_cookie.fetch_add(1, Relaxed);
        self.waiting.lock().expect("clients").insert(cookie, (conn.clone(), id));
        cookie
    }

    pub fn forget(&self, cookie: Cookie) {
        self.waiting.lock().expect("clients").remove(&cookie);
    }

    fn answer(&self, cookie: Cookie, status: Status, body: &[u8]) {
        if let Some((conn, id)) = self.take(cookie) {
            conn.respond(id, status, body);
        }
    }

    /// A read's answer: a long value is shared with the store, not copied.
    fn answer_value(&self, cookie: Cookie, value: Option<&Value>) {
        if let Some((conn, id)) = self.take(cookie) {
            match value {
                Some(Value::Shared(bytes)) => conn.respond_shared(id, Status::Ok, bytes.clone()),
                other => conn.respond(id, Status::Ok, other.map_or(&[], Value::as_slice)),
            }
        }
    }

    fn take(&self, cookie: Cookie) -> Option<(Arc<Outbox>, u64)> {
        self.waiting.lock().expect("clients").remove(&cookie)
    }
}

/// The observable summary of a replica's state, identical on replicas that applied the same
/// requests.
#[derive(Default)]
pub struct Summary {
    pub keys: AtomicU64,
    pub digest: AtomicU64,
    pub duplicates: AtomicU64,
    pub primary: AtomicBool,
}

/// A stored value and its entry's share of the digest, kept so that an overwrite need not hash
/// the old entry again.
struct Entry {
    value: Value,
    hash: u64,
}

/// A key: up to 22 bytes in the map's own slot, longer ones boxed. Hashes and compares as its
/// bytes, so the map is looked up by a request's bytes.
enum Key {
    Inline(u8, [u8; 22]),
    Boxed(Box<[u8]>),
}

/// A value: up to 46 bytes in the map's own slot, longer ones shared with the reads that return
/// them. Most puts overwrite a key written long before, so each pointer to chase was a cache
/// miss, and a heap value one allocation and one free.
enum Value {
    Inline(u8, [u8; 46]),
    Shared(Bytes),
}

impl Key {
    fn new(bytes: &[u8]) -> Key {
        let mut inline = [0; 22];
        match inline.get_mut(..bytes.len()) {
            Some(head) => {
                head.copy_from_slice(bytes);
                Key::Inline(bytes.len() as u8, inline)
            }
            None => Key::Boxed(bytes.into()),
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        match self {
            Key::Inline(len, bytes) => &bytes[..*len as usize],
            Key::Boxed(bytes) => bytes,
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrow::<[u8]>::borrow(self).hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        Borrow::<[u8]>::borrow(self) == Borrow::<[u8]>::borrow(other)
    }
}

impl Eq for Key {}

impl Value {
    fn new(bytes: &[u8]) -> Value {
        let mut inline = [0; 46];
        match inline.get_mut(..bytes.len()) {
            Some(head) => {
                head.copy_from_slice(bytes);
                Value::Inline(bytes.len() as u8, inline)
            }
            None => Value::Shared(Bytes::copy_from_slice(bytes)),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Value::Inline(len, bytes) => &bytes[..*len as usize],
            Value::Shared(bytes) => bytes,
        }
    }
}

/// The key-value store: `put` requests replicate; `get` is a fast read.
pub struct Kv {
    /// An overwrite (the common case) looks the key up by the request's bytes and, for short
    /// keys and values, touches no heap at all. The entries sit in insertion order behind an
    /// index of 8 bytes per slot: a lookup probes the small index (which stays in cache at
    /// 100,000 keys, where a table of whole entries did not: every put missed on it) and then
    /// reads the entry, in the order keys were first written, the order a load that writes
    /// its keys in turn writes them again.
    map: IndexMap<Key, Entry>,
    /// XOR of every entry's hash: the same for the same contents, whatever the order.
    digest: u64,
    duplicates: u64,
    clients: Arc<Clients>,
    summary: Arc<Summary>,
    seq: Arc<dyn Fn() -> u64 + Send + Sync>,
}

/// An entry's share of the digest: the same for the same key and value on every replica.
/// Not RSL's CRC-64, which at 1 KB values cost the execute thread a tenth of the cluster's
/// CPU: four independent multiply-rotate lanes over 8-byte words (the digest need only tell
/// replicas apart, not resist an adversary), then the SplitMix64 finalizer, so that XORing
/// the shares of structured entries does not cancel out.
fn entry_hash(key: &[u8], value: &[u8]) -> u64 {
    const K: [u64; 4] = [0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f, 0x1656_67b1_9e37_79f9, 0x27d4_eb2f_1656_67c5];
    let mut lanes = [key.len() as u64, value.len() as u64, K[2], K[3]];
    for (i, part) in [key, value].into_iter().enumerate() {
        let mut blocks = part.chunks_exact(32);
        for block in &mut blocks {
            for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                *lane = (*lane ^ u64::from_le_bytes(word.try_into().expect("8 bytes"))).wrapping_mul(K[0]).rotate_left(29);
            }
        }
        let mut tail = [0u8; 32];
        tail[..blocks.remainder().len()].copy_from_slice(blocks.remainder());
        for (lane, word) in lanes.iter_mut().zip(tail.chunks_exact(8)) {
            *lane = (*lane ^ u64::from_le_bytes(word.try_into().expect("8 bytes")) ^ i as u64).wrapping_mul(K[1]).rotate_left(31);
        }
    }
    let mut z = lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Kv {
    pub fn new(clients: Arc<Clients>, summary: Arc<Summary>, seq: Arc<dyn Fn() -> u64 + Send + Sync>) -> Kv {
        Kv { map: IndexMap::new(), digest: 0, duplicates: 0, clients, summary, seq }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        let hash = entry_hash(key, value);
        let value = Value::new(value);
        match self.map.get_mut(key) {
            Some(old) => {
                if old.hash == hash {
                    self.duplicates += 1;
                }
                self.digest ^= old.hash ^ hash;
                *old = Entry { value, hash };
            }
            None => {
                self.digest ^= hash;
                self.map.insert(Key::new(key), Entry { value, hash });
            }
        }
    }

    fn publish(&self) {
        let s = &self.summary;
        s.keys.store(self.map.len() as u64, Relaxed);
        s.digest.store(self.digest, Relaxed);
        s.duplicates.store(self.duplicates, Relaxed);
    }
}

impl StateMachine for Kv {
    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        self.map.clear();
        (self.digest, self.duplicates) = (0, 0);
        let Some(reader) = reader else { return true };
        let mut data = vec![0u8; reader.size() as usize];
        let mut at = 0;
        while at < data.len() {
            match reader.get_data(&mut data[at..]) {
                Ok(0) | Err(_) => return false,
                Ok(n) => at += n,
            }
        }
        let mut buf = Bytes::from(data);
        while buf.remaining() >= 8 {
            let (klen, vlen) = (buf.get_u32_le() as usize, buf.get_u32_le() as usize);
            if buf.remaining() < klen + vlen {
                return false;
            }
            let key = buf.split_to(klen);
            let value = buf.split_to(vlen);
            self.put(&key, &value);
        }
        self.duplicates = 0;
        self.publish();
        buf.is_empty()
    }

    fn execute_replicated_request(&mut self, request: &[u8], cookie: Option<Cookie>, _save_state: &mut bool) {
        // The server replicates only puts that parse; one that does not (from another writer of
        // the log) changes nothing, and its client still hears back.
        let status = match proto::parse_put(request) {
            Some((key, value)) => {
                self.put(key, value);
                Status::Ok
            }
            None => Status::Invalid,
        };
        if let Some(cookie) = cookie {
            let seq = (self.seq)().to_le_bytes();
            self.clients.answer(cookie, status, if status == Status::Ok { &seq } else { &[] });
        }
    }

    fn look_ahead(&self, requests: &[Bytes]) {
        // At 100,000 keys written in turn, each put's lookup missed the cache on the map's
        // index, a sixth of the cluster's samples at 1024 in flight. Lookups of hashes taken
        // beforehand, in a row, are independent loads whose misses overlap; the puts that
        // follow find the slots cached.
        let mut keys = requests.iter().filter_map(|r| proto::parse_put(r)).map(|(key, _)| key).peekable();
        while keys.peek().is_some() {
            let mut hashed = [(0, &[][..]); 16];
            let n = hashed.iter_mut().zip(&mut keys).map(|(slot, key)| *slot = (self.map.hasher().hash_one(key), key)).count();
            for &(hash, key) in &hashed[..n] {
                std::hint::black_box(self.map.raw_entry_v1().from_key_hashed_nocheck(hash, key));
            }
        }
    }

    fn after_execute_replicated_requests(&mut self) {
        self.publish();
    }

    fn execute_fast_read_request(&self, request: &[u8], cookie: Cookie) {
        self.clients.answer_value(cookie, self.map.get(request).map(|e| &e.value));
    }

    fn abort_request(&mut self, status: ResponseCode, cookie: Cookie) {
        let status = match status {
            ResponseCode::NotPrimary => Status::NotPrimary,
            ResponseCode::FastReadStale => Status::Stale,
            _ => Status::ShuttingDown,
        };
        self.clients.answer(cookie, status, &[]);
    }

    fn save_state(&self, writer: &mut CheckpointWriter) {
        let mut buf = BytesMut::with_capacity(1 << 20);
        for (k, Entry { value, .. }) in &self.map {
            let (k, v): (&[u8], _) = (k.borrow(), value.as_slice());
            buf.put_u32_le(k.len() as u32);
            buf.put_u32_le(v.len() as u32);
            buf.put_slice(k);
            buf.put_slice(v);
            if buf.len() >= 1 << 20 {
                let _ = writer.write(&buf);
                buf.clear();
            }
        }
        let _ = writer.write(&buf);
    }

    fn notify_status(&mut self, is_primary: bool) {
        self.summary.primary.store(is_primary, Relaxed);
        tracing::info!(is_primary, "status");
    }

    fn notify_configuration_changed(&mut self, cookie: Option<Cookie>) {
        tracing::info!(?cookie, "configuration changed");
        if let Some(cookie) = cookie {
            self.clients.answer(cookie, Status::Ok, &[]);
        }
    }

    fn abort_change_configuration(&mut self, _status: ResponseCode, cookie: Cookie) {
        self.clients.answer(cookie, Status::NotPrimary, &[]);
    }

    fn shut_down(&mut self, _status: ResponseCode) {
        tracing::info!("shut down");
    }

    fn state_saved(&mut self, seq: u64, file: &Path) {
        tracing::info!(seq, file = %file.display(), "checkpoint saved");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_hashes_tell_apart_where_the_key_ends_and_every_byte() {
        let mut seen = std::collections::HashSet::new();
        let value: Vec<u8> = (0..100u8).collect();
        for split in 0..=value.len() {
            assert!(seen.insert(entry_hash(&value[..split], &value[split..])), "split at {split}");
        }
        for len in [0, 1, 8, 31, 32, 33, 64, 1024] {
            let base = vec![0u8; len];
            assert!(seen.insert(entry_hash(b"k", &base)), "zeros of {len}");
            for at in 0..len {
                let mut flipped = base.clone();
                flipped[at] = 1;
                assert!(seen.insert(entry_hash(b"k", &flipped)), "byte {at} of {len}");
            }
        }
    }

    #[test]
    fn short_and_long_keys_and_values_are_stored_alike() {
        let mut kv = Kv::new(Arc::default(), Arc::default(), Arc::new(|| 0));
        let (short, long) = (vec![7u8; 22], vec![9u8; 23]);
        let (small, large) = (vec![1u8; 46], vec![2u8; 47]);
        for (key, value) in [(&short, &small), (&long, &large), (&short, &large), (&long, &small)] {
            kv.put(key, value);
            let stored = kv.map.get(&key[..]).expect("stored");
            assert_eq!(stored.value.as_slice(), &value[..]);
        }
        assert_eq!(kv.map.len(), 2, "the second put of each key overwrote the first");
        assert!(matches!(kv.map.get(&short[..]).unwrap().value, Value::Shared(_)) && matches!(Key::new(&long), Key::Boxed(_)));
        // The digest depends on the contents only, not on how an entry is held.
        let mut again = Kv::new(Arc::default(), Arc::default(), Arc::new(|| 0));
        again.put(&long, &small);
        again.put(&short, &large);
        assert_eq!(kv.digest, again.digest);
    }

    #[test]
    fn a_replicated_put_that_does_not_parse_is_still_answered() {
        let clients = Arc::new(Clients::default());
        let mut kv = Kv::new(clients.clone(), Arc::default(), Arc::new(|| 9));
        let outbox = Outbox::detached();
        // Key length 0xFFFF, 3 bytes behind it: once replicated, never answered, the socket leaked.
        let cookie = clients.register(&outbox, 42);
        kv.execute_replicated_request(b"\xff\xffabc", Some(cookie), &mut false);
        let frame = proto::take_frame(&mut outbox.take_pending()).unwrap().expect("the cookie is answered");
        let (id, status, body) = proto::parse_response(frame);
        assert_eq!((id, status, body.len()), (42, Status::Invalid, 0));
        assert_eq!(kv.map.len(), 0);
        assert!(clients.waiting.lock().unwrap().is_empty(), "nothing left waiting");
        // A good one is applied and answered with the sequence number.
        let cookie = clients.register(&outbox, 43);
        let mut put = BytesMut::new();
        proto::put_request(&mut put, 0, b"k", b"v");
        kv.execute_replicated_request(&put[4 + 9..], Some(cookie), &mut false);
        let frame = proto::take_frame(&mut outbox.take_pending()).unwrap().expect("answered");
        let (_, status, body) = proto::parse_response(frame);
        assert_eq!((status, &body[..]), (Status::Ok, &9u64.to_le_bytes()[..]));
        assert_eq!(kv.map.get(&b"k"[..]).map(|e| e.value.as_slice()), Some(&b"v"[..]));
    }
}
