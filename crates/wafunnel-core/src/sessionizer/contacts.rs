//! The contacts of a partition and their maintenance schedule.
//!
//! Contacts live in a dense slab of fixed-size slots; a hash table of `u32`
//! slot numbers finds them by key, so the table's empty buckets cost 5 bytes
//! each rather than a whole contact. A removed contact's slot is reused by
//! the next new contact.
//!
//! Contract:
//! - **Nothing observable depends on slot numbers**: they are never saved,
//!   and [`Contacts::pop_due`] returns the contacts due in key order, so a
//!   restored state (whose slots are numbered in key order) maintains its
//!   contacts in the same order as the state that was saved.
//! - **Schedule**: a contact is due at the hour of its `scheduled` time.
//!   Scheduling earlier leaves the later entry behind; entries of a contact
//!   rescheduled or removed since are stale and skipped, and a contact is
//!   returned once however many entries it has in the hour.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{ContactKey, PackedState, Tail, UNSCHEDULED};
use crate::time::HOUR_MS;

/// One contact's slot. In this order, the key is in the slot's first 20
/// bytes, so a lookup compares it within one cache line.
#[derive(Debug)]
#[repr(C)]
pub(super) struct Contact {
    user: [u64; 2],
    account: u32,
    /// Rows changed since the last drain (never saved: a state is saved drained).
    pub(super) dirty: bool,
    /// False for a slot that waits for reuse.
    live: bool,
    /// When its maintenance is due (a whole hour), or [`UNSCHEDULED`].
    pub(super) scheduled: i64,
    pub(super) tail: Option<Box<Tail>>,
    pub(super) state: PackedState,
}

impl Contact {
    fn new(key: ContactKey, state: PackedState, tail: Option<Box<Tail>>, scheduled: i64) -> Self {
        Contact {
            user: key.user,
            scheduled,
            tail,
            state,
            account: key.account,
            dirty: false,
            live: true,
        }
    }

    pub(super) fn key(&self) -> ContactKey {
        ContactKey {
            account: self.account,
            user: self.user,
        }
    }

    fn is(&self, key: &ContactKey) -> bool {
        self.user == key.user && self.account == key.account && self.live
    }
}

/// The contacts of a partition; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct Contacts {
    slots: Vec<Contact>,
    vacant: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Slots by the hour their maintenance is due; may hold stale entries.
    schedule: BTreeMap<i64, Vec<u32>>,
    /// Entries of one hour not in `schedule` yet: events arrive roughly in
    /// time order, so most entries go to the hour of the previous one, and
    /// this saves a search of `schedule` for each.
    recent: (i64, Vec<u32>),
}

impl Contacts {
    /// The number of contacts held.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Every contact, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Contact> {
        self.slots.iter().filter(|c| c.live)
    }

    pub(super) fn get_mut(&mut self, key: &ContactKey) -> Option<&mut Contact> {
        let slots = &self.slots;
        let slot = *self
            .index
            .find(self.hasher.hash_one(key), |&i| slots[i as usize].is(key))?;
        Some(&mut self.slots[slot as usize])
    }

    /// The contact of `key`, looked for in `slot` first: where it was,
    /// unless it was removed since.
    pub(super) fn get_at(&mut self, slot: u32, key: &ContactKey) -> Option<&mut Contact> {
        if self.slots[slot as usize].is(key) {
            return Some(&mut self.slots[slot as usize]);
        }
        self.get_mut(key)
    }

    pub(super) fn slot(&mut self, slot: u32) -> &mut Contact {
        &mut self.slots[slot as usize]
    }

    /// The slot of `key`, created empty and unscheduled if it has none.
    pub(super) fn get_or_insert(&mut self, key: ContactKey) -> u32 {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        if let Some(&slot) = self.index.find(hash, |&i| slots[i as usize].is(&key)) {
            return slot;
        }
        self.insert(
            hash,
            Contact::new(key, PackedState::default(), None, UNSCHEDULED),
        )
    }

    fn insert(&mut self, hash: u64, contact: Contact) -> u32 {
        let slot = match self.vacant.pop() {
            Some(slot) => {
                self.slots[slot as usize] = contact;
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len())
                    .expect("fewer than 2^32 contacts in one partition");
                self.slots.push(contact);
                slot
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, slot, |&i| hasher.hash_one(slots[i as usize].key()));
        slot
    }

    /// Removes the contact in `slot`, releasing what it holds.
    pub(super) fn remove(&mut self, slot: u32) {
        let contact = &mut self.slots[slot as usize];
        let hash = self.hasher.hash_one(contact.key());
        if let Ok(entry) = self.index.find_entry(hash, |&i| i == slot) {
            entry.remove();
        }
        contact.live = false;
        contact.dirty = false;
        contact.scheduled = UNSCHEDULED;
        contact.tail = None;
        contact.state = PackedState::default();
        self.vacant.push(slot);
    }

    /// Schedules the contact's maintenance for the end of the hour of `due`,
    /// unless it is due earlier already.
    pub(super) fn schedule(&mut self, slot: u32, due: i64) {
        if due == UNSCHEDULED {
            return;
        }
        // Round up to the hour: maintenance runs once per watermark hour.
        let due = due.div_euclid(HOUR_MS) * HOUR_MS + HOUR_MS;
        let contact = &mut self.slots[slot as usize];
        if contact.scheduled <= due {
            return;
        }
        contact.scheduled = due;
        if self.recent.0 != due {
            self.flush_recent();
            self.recent.0 = due;
        }
        self.recent.1.push(slot);
    }

    fn flush_recent(&mut self) {
        if !self.recent.1.is_empty() {
            let (due, slots) = std::mem::take(&mut self.recent);
            self.schedule.entry(due).or_default().extend(slots);
        }
    }

    /// The contacts of the earliest hour due at `watermark`, if any: each
    /// once, in key order, unscheduled.
    pub(super) fn pop_due(&mut self, watermark: i64) -> Option<Vec<u32>> {
        self.flush_recent();
        let entry = self.schedule.first_entry()?;
        if *entry.key() > watermark {
            return None;
        }
        let (due, due_slots) = entry.remove_entry();
        // A slot's first entry unschedules it, so the others are skipped.
        // Keys are read once each: sorting slots by their key would read the
        // slots at random on every comparison.
        let mut keyed: Vec<(ContactKey, u32)> = due_slots
            .into_iter()
            .filter_map(|i| {
                let c = &mut self.slots[i as usize];
                (c.live && c.scheduled == due).then(|| {
                    c.scheduled = UNSCHEDULED;
                    (c.key(), i)
                })
            })
            .collect();
        keyed.sort_unstable_by_key(|&(key, _)| key);
        Some(keyed.into_iter().map(|(_, i)| i).collect())
    }

    /// Adds a contact read from a snapshot, with its schedule.
    pub(super) fn restore(
        &mut self,
        key: ContactKey,
        state: PackedState,
        tail: Option<Box<Tail>>,
        scheduled: i64,
    ) {
        let hash = self.hasher.hash_one(key);
        let slot = self.insert(hash, Contact::new(key, state, tail, scheduled));
        if scheduled != UNSCHEDULED {
            self.schedule.entry(scheduled).or_default().push(slot);
        }
    }
}
