//! Saving and loading a partition's state, so that a service restores it
//! after a crash or a rebalance instead of replaying the partition.
//!
//! Contract:
//! - **What a snapshot holds**: everything folded from the events applied so
//!   far: contacts with their conversations, the events kept for reordering
//!   and when their maintenance is due, the dedup ids, the partition
//!   aggregates, ad names and hierarchy, spend snapshots, the watermark and
//!   the outcome counts. It holds no rows: it is taken right after a drain,
//!   and [`Sessionizer::save`] refuses otherwise ([`StateError::Undrained`]).
//! - **Not the configuration**: windows and account settings are arguments
//!   of [`Sessionizer::load`]. The caller is responsible for passing the
//!   same ones the state was built with; nothing in the snapshot checks it,
//!   and other windows or time zones would apply different rules to the
//!   events kept for reordering than the ones that built the state.
//! - **Exact resume**: `load(save(s))` followed by any events yields exactly
//!   the drains `s` would have yielded.
//! - **Deterministic**: the bytes are a pure function of the events applied
//!   and of where they were drained (hash maps and contacts are written in
//!   key order, not in their seed-dependent or slot order, and contacts in the
//!   form the fold holds them, not their packed form in memory), so a replay
//!   of the same prefix, drained at the same points, writes the same bytes.
//! - **Checked, never misread**: the bytes start with a format version and
//!   end with an xxh3-64 checksum of the rest. A snapshot of another version
//!   is refused ([`StateError::Version`]); so is one truncated, damaged or
//!   reassembled from the wrong chunks ([`StateError::Decode`]). Changing
//!   the saved layout of any state type (a field, its order, an enum
//!   variant) requires bumping [`FORMAT_VERSION`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use super::{
    AccountState, AdDim, Contact, ContactKey, ContactState, Contacts, ContactsEntry, Exports,
    FunnelEntry, OutcomeCounts, PackedState, Sessionizer, Snapshot, Step, Tail,
};
use crate::config::{Accounts, Windows};
use crate::time::{Day, DayClock};

/// The layout version written first in every snapshot.
///
/// 2: billable outbound messages per conversation, messaged start days per
/// contact, and their totals (`outbound_billable`, `messaging_contacts`).
/// 3: click ids of conversations and kept events, Conversions API exports
/// pending and emitted.
/// 4: no maintenance schedule: it is rebuilt from each contact's due time.
pub(super) const FORMAT_VERSION: u32 = 4;

/// The oldest layout this build still reads: 3 differs from 4 only by the
/// maintenance schedule after the contacts, which is read and dropped, so
/// a deployment upgraded from a build writing 3 restores its snapshots
/// instead of replaying the partitions.
pub(super) const OLDEST_READABLE_VERSION: u32 = 3;

/// Version 3's maintenance schedule: contacts by the hour they are due.
type ScheduleV3 = BTreeMap<i64, Vec<ContactKey>>;

/// Why a state could not be saved or loaded. Every variant is fatal for the
/// snapshot at hand: none is worth retrying as is. A failed load means
/// rebuilding the partition by replaying it from the beginning; a failed
/// save leaves the sessionizer as it was.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Rows changed since the last drain are pending. Fatal: a caller bug;
    /// drain (and deliver those rows) before saving.
    #[error("cannot save the state: rows changed since the last drain are pending")]
    Undrained,
    /// Writing failed; the source is the writer's error (or the encoder's,
    /// as an I/O error). Fatal for this snapshot: discard what was written;
    /// a later save, to a writer that works, may succeed.
    #[error("cannot write the state snapshot")]
    Encode(#[source] io::Error),
    /// The bytes are not a whole snapshot as written: truncated, damaged, or
    /// followed by other bytes (the checksum does not match). Fatal: replay
    /// the partition instead.
    #[error("invalid state snapshot: {0}")]
    Decode(String),
    /// The snapshot has another layout version. Fatal: replay the partition
    /// instead.
    #[error(
        "state snapshot format version {found}, this build reads versions {} to {expected}",
        OLDEST_READABLE_VERSION
    )]
    Version {
        /// The version in the snapshot.
        found: u32,
        /// The version this build writes (it reads it and the older ones
        /// down to [`OLDEST_READABLE_VERSION`]).
        expected: u32,
    },
}

impl Sessionizer {
    /// Writes the state (not the configuration) to `out`, which needs no
    /// buffering of its own. Only valid right after [`Sessionizer::drain`];
    /// otherwise returns [`StateError::Undrained`]. See [`Sessionizer::load`]
    /// for the contract.
    pub fn save<W: Write>(&self, out: W) -> Result<(), StateError> {
        let drained = self.dirty_contacts.is_empty()
            && self.pending_rows.is_empty()
            && self.pending_deletes.is_empty()
            && self.funnel_dirty.is_empty()
            && self.contacts_dirty.is_empty()
            && self.ads_dirty.is_empty()
            && self.spend_dirty.is_empty()
            && self.exports.out.is_empty();
        if !drained {
            return Err(StateError::Undrained);
        }
        debug_assert_eq!(
            self.seen.len(),
            self.seen_by_hour.values().map(Vec::len).sum::<usize>(),
            "the dedup set is rebuilt from its buckets on load"
        );
        let state = StateRef {
            partition: self.partition,
            watermark: self.watermark,
            maintained_hour: self.maintained_hour,
            counts: self.counts,
            accounts: self.accounts.iter().map(|a| &a.id).collect(),
            ad_names: &self.ad_names,
            contacts: ContactsRef::new(&self.contacts),
            seen_by_hour: &self.seen_by_hour,
            funnel: Sorted::new(&self.funnel, |(account, ad, day)| (account, ad, day.0)),
            contacts_daily: Sorted::new(&self.contacts_daily, |(account, day)| (account, day.0)),
            ads: Sorted::new(&self.ads, |k| k),
            spend: Sorted::new(&self.spend, |(account, ad, day)| (account, ad, day.0)),
            exports: &self.exports,
        };
        // Buffered before the sink, so that it hashes large chunks rather
        // than every field.
        let mut buffered = BufWriter::with_capacity(
            1 << 16,
            Sink {
                out,
                hash: Xxh3Default::new(),
                error: None,
            },
        );
        let encoded = postcard::to_io(&(FORMAT_VERSION, &state), &mut buffered).map(drop);
        let written = encoded
            .map_err(io::Error::other)
            .and_then(|()| buffered.flush());
        let sink = buffered.get_mut();
        let written = written.and_then(|()| {
            let checksum = sink.hash.digest();
            sink.out.write_all(&checksum.to_le_bytes())?;
            sink.out.flush()
        });
        written.map_err(|e| StateError::Encode(sink.error.take().unwrap_or(e)))
    }

    /// Rebuilds the sessionizer whose [`Sessionizer::save`] wrote `bytes`,
    /// with the given configuration, which must be the one the state was
    /// built with (the snapshot cannot check it). Applying events to the
    /// result gives exactly the drains the saved sessionizer would have
    /// given. Truncated or damaged bytes are a [`StateError::Decode`],
    /// another layout a [`StateError::Version`].
    pub fn load(
        windows: Windows,
        accounts: Accounts,
        bytes: &[u8],
    ) -> Result<Sessionizer, StateError> {
        let decode = |e: postcard::Error| StateError::Decode(e.to_string());
        let (found, _) = postcard::take_from_bytes::<u32>(bytes).map_err(decode)?;
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&found) {
            return Err(StateError::Version {
                found,
                expected: FORMAT_VERSION,
            });
        }
        let Some((body, checksum)) = bytes.split_last_chunk::<8>() else {
            return Err(StateError::Decode("shorter than its checksum".into()));
        };
        if xxh3_64(body) != u64::from_le_bytes(*checksum) {
            return Err(StateError::Decode(
                "checksum mismatch: truncated or damaged".into(),
            ));
        }
        if found == FORMAT_VERSION {
            let (_, state): (u32, State) = postcard::from_bytes(body).map_err(decode)?;
            Ok(Self::restore(state, windows, accounts))
        } else {
            let (_, state): (u32, State<ScheduleV3>) =
                postcard::from_bytes(body).map_err(decode)?;
            Ok(Self::restore(state, windows, accounts))
        }
    }

    /// The sessionizer of a decoded state, of any readable version.
    fn restore<S>(state: State<S>, windows: Windows, accounts: Accounts) -> Sessionizer {
        let mut s = Sessionizer::new(state.partition, windows, accounts);
        // The day clocks come from the configuration: their caches do not
        // change any day they return.
        s.accounts = state
            .accounts
            .into_iter()
            .map(|id| AccountState {
                clock: DayClock::new(s.settings.get(&id).time_zone),
                id,
            })
            .collect();
        s.account_index = s
            .accounts
            .iter()
            .zip(0..)
            .map(|(a, i)| (a.id.clone(), i))
            .collect();
        s.ad_index = state.ad_names.iter().cloned().zip(0..).collect();
        s.ad_names = state.ad_names;
        // Every applied id is in exactly one bucket, so the set is not saved.
        s.seen = HashSet::with_capacity(state.seen_by_hour.values().map(Vec::len).sum());
        s.seen_by_hour = state
            .seen_by_hour
            .into_iter()
            .map(|(hour, ids)| {
                let ids: Vec<u128> = ids.into_iter().map(|id| id.0).collect();
                s.seen.extend(ids.iter().copied());
                (hour, ids)
            })
            .collect();
        s.watermark = state.watermark;
        s.maintained_hour = state.maintained_hour;
        s.counts = state.counts;
        s.contacts = state.contacts;
        s.funnel = state
            .funnel
            .into_iter()
            .map(|((account, ad, day), e)| ((account, ad, Day(day)), e))
            .collect();
        s.contacts_daily = state
            .contacts_daily
            .into_iter()
            .map(|((account, day), e)| ((account, Day(day)), e))
            .collect();
        s.ads = state.ads;
        s.spend = state
            .spend
            .into_iter()
            .map(|((account, ad, day), e)| ((account, ad, Day(day)), e))
            .collect();
        s.exports = state.exports;
        s
    }
}

/// The saved layout, borrowed from a sessionizer. [`State`] must list the
/// same fields, in the same order, with types of the same encoding.
#[derive(Serialize)]
struct StateRef<'a> {
    partition: u32,
    watermark: i64,
    maintained_hour: i64,
    counts: OutcomeCounts,
    /// Account ids by index; the day clocks come from the configuration.
    accounts: Vec<&'a Arc<str>>,
    ad_names: &'a [Arc<str>],
    contacts: ContactsRef<'a>,
    #[serde(serialize_with = "dedup_ids")]
    seen_by_hour: &'a BTreeMap<i64, Vec<u128>>,
    funnel: Sorted<'a, (u32, u32, i32), FunnelEntry>,
    contacts_daily: Sorted<'a, (u32, i32), ContactsEntry>,
    ads: Sorted<'a, (u32, u32), AdDim>,
    spend: Sorted<'a, (u32, u32, i32), Snapshot>,
    exports: &'a Exports,
}

/// The saved layout, owned. Days are plain numbers here: [`Day`]'s own
/// encoding is the `YYYY-MM-DD` text of the output rows.
///
/// `Schedule` is what version 3 saved after the contacts ([`ScheduleV3`]);
/// version 4 saves nothing there, which `()` reads.
#[derive(Deserialize)]
struct State<Schedule = ()> {
    partition: u32,
    watermark: i64,
    maintained_hour: i64,
    counts: OutcomeCounts,
    accounts: Vec<Arc<str>>,
    ad_names: Vec<Arc<str>>,
    contacts: Contacts,
    /// Read to reach the fields after it, then dropped: the contacts'
    /// due times rebuild it.
    _schedule: Schedule,
    seen_by_hour: BTreeMap<i64, Vec<Hash128>>,
    funnel: HashMap<(u32, u32, i32), FunnelEntry>,
    contacts_daily: HashMap<(u32, i32), ContactsEntry>,
    ads: HashMap<(u32, u32), AdDim>,
    spend: HashMap<(u32, u32, i32), Snapshot>,
    exports: Exports,
}

/// The contacts in key order.
struct ContactsRef<'a>(Vec<(ContactKey, &'a Contact)>);

impl<'a> ContactsRef<'a> {
    fn new(contacts: &'a Contacts) -> Self {
        // The keys sit beside the references: sorting compares them often.
        let mut sorted: Vec<(ContactKey, &Contact)> =
            contacts.iter().map(|c| (c.key(), c)).collect();
        sorted.sort_unstable_by_key(|&(key, _)| key);
        ContactsRef(sorted)
    }
}

impl Serialize for ContactsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|&(key, c)| {
            let saved = SavedContactRef {
                state: c.state.unpack(),
                tail: c.tail.as_ref().map(|tail| SavedTailRef {
                    checkpoint: tail.checkpoint.unpack(),
                    steps: &tail.steps,
                }),
                scheduled: c.scheduled,
            };
            (key, saved)
        }))
    }
}

/// A contact as saved, borrowed. [`SavedContact`] must list the same fields.
#[derive(Serialize)]
struct SavedContactRef<'a> {
    state: ContactState,
    tail: Option<SavedTailRef<'a>>,
    scheduled: i64,
}

#[derive(Serialize)]
struct SavedTailRef<'a> {
    checkpoint: ContactState,
    steps: &'a [Step],
}

/// A contact as saved, owned.
#[derive(Deserialize)]
struct SavedContact {
    state: ContactState,
    tail: Option<SavedTail>,
    scheduled: i64,
}

#[derive(Deserialize)]
struct SavedTail {
    checkpoint: ContactState,
    steps: Vec<Step>,
}

/// Read straight into the slots: no map of a million contacts in between.
impl<'de> Deserialize<'de> for Contacts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Saved;
        impl<'de> Visitor<'de> for Saved {
            type Value = Contacts;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of contacts")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Contacts, A::Error> {
                let mut contacts = Contacts::default();
                while let Some((key, saved)) = map.next_entry::<ContactKey, SavedContact>()? {
                    let tail = saved.tail.map(|tail| {
                        Box::new(Tail {
                            checkpoint: PackedState::pack(tail.checkpoint),
                            steps: tail.steps,
                        })
                    });
                    contacts.restore(key, PackedState::pack(saved.state), tail, saved.scheduled);
                }
                Ok(contacts)
            }
        }
        deserializer.deserialize_map(Saved)
    }
}

/// A hash map's entries in key order, with the key in its saved form.
struct Sorted<'a, K, V>(Vec<(K, &'a V)>);

impl<'a, K: Ord, V> Sorted<'a, K, V> {
    fn new<M: Copy>(map: &'a HashMap<M, V>, key: impl Fn(M) -> K) -> Self {
        let mut entries: Vec<(K, &V)> = map.iter().map(|(k, v)| (key(*k), v)).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Sorted(entries)
    }
}

impl<K: Serialize, V: Serialize> Serialize for Sorted<'_, K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, *v)))
    }
}

fn dedup_ids<S: Serializer>(
    by_hour: &&BTreeMap<i64, Vec<u128>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    struct Ids<'a>(&'a [u128]);
    impl Serialize for Ids<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(self.0.iter().map(|&id| Hash128(id)))
        }
    }
    serializer.collect_map(by_hour.iter().map(|(hour, ids)| (hour, Ids(ids))))
}

/// Hashes what is written, and keeps the writer's own error: postcard
/// reports any failed write as a full buffer.
struct Sink<W> {
    out: W,
    hash: Xxh3Default,
    error: Option<io::Error>,
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.out.write(buf) {
            Ok(n) => {
                self.hash.update(&buf[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                self.error.get_or_insert(e);
                Err(kind.into())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A 128-bit hash as a 16-byte string: a uniformly random value takes 19
/// bytes as a varint, and a byte string is one copy where an array is 16
/// separately encoded elements.
struct Hash128(u128);

impl Serialize for Hash128 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.to_be_bytes())
    }
}

impl<'de> Deserialize<'de> for Hash128 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = Hash128;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("16 bytes")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Hash128, E> {
                let bytes =
                    <[u8; 16]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Hash128(u128::from_be_bytes(bytes)))
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

/// The user half of a contact key, as a [`Hash128`].
pub(super) mod user_hash {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Hash128;

    pub(in crate::sessionizer) fn serialize<S: Serializer>(
        user: &[u64; 2],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        Hash128((u128::from(user[0]) << 64) | u128::from(user[1])).serialize(serializer)
    }

    pub(in crate::sessionizer) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[u64; 2], D::Error> {
        let Hash128(user) = Hash128::deserialize(deserializer)?;
        Ok([(user >> 64) as u64, user as u64])
    }
}

/// A time that may be unset, as an option: the unset marker `i64::MIN`
/// takes ten bytes as a varint, `None` one.
pub(super) mod opt_time {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::sessionizer::{opt, NONE};

    pub(in crate::sessionizer) fn serialize<S: Serializer>(
        t: &i64,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        opt(*t).serialize(serializer)
    }

    pub(in crate::sessionizer) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<i64, D::Error> {
        Ok(Option::<i64>::deserialize(deserializer)?.unwrap_or(NONE))
    }
}

/// Amounts as their integer units: [`Money`](crate::money::Money)'s own
/// encoding is the decimal text of the output rows.
pub(super) mod money_units {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::money::Money;

    pub(in crate::sessionizer) fn serialize<S: Serializer>(
        money: &Money,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        money.0.serialize(serializer)
    }

    pub(in crate::sessionizer) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Money, D::Error> {
        i64::deserialize(deserializer).map(Money)
    }
}

/// A contact's conversations, read straight into the inline vector (smallvec
/// has no serde support enabled here, and a `Vec` would allocate per contact).
pub(super) mod convs {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use smallvec::SmallVec;

    use crate::sessionizer::Conv;

    pub(in crate::sessionizer) fn serialize<S: Serializer>(
        convs: &SmallVec<[Conv; 1]>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(convs.iter())
    }

    pub(in crate::sessionizer) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SmallVec<[Conv; 1]>, D::Error> {
        struct Convs;
        impl<'de> Visitor<'de> for Convs {
            type Value = SmallVec<[Conv; 1]>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of conversations")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut convs = SmallVec::new();
                while let Some(conv) = seq.next_element()? {
                    convs.push(conv);
                }
                Ok(convs)
            }
        }
        deserializer.deserialize_seq(Convs)
    }
}
