//! A contact's state as held between events, in the least memory that
//! represents it exactly.
//!
//! Almost every contact holds at most one conversation, whose times are
//! within 49 days of its start and whose counters are small; that state is
//! held inline in 64 bytes ([`PackedState::Compact`]): times as milliseconds
//! after the start, counters as `u16`, and the fields most conversations
//! never set (a lead, purchases, the click id) in a box allocated only when
//! one is set. Any other state (two conversations or more, messaged days
//! already evicted, a time or a counter out of range) is held whole in a box
//! ([`PackedState::Wide`]).
//!
//! Contract: [`PackedState::pack`] followed by [`PackedState::unpack`] gives
//! back the same [`ContactState`], field for field, whichever form was
//! chosen. The fold only ever sees the unpacked state, so the form never
//! changes a row, a snapshot byte or an order.

use std::sync::Arc;

use smallvec::SmallVec;

use super::{ContactState, Conv, NONE, NO_DAY};

/// A time stored as milliseconds after the conversation's start: "not yet".
const ABSENT: u32 = u32::MAX;

/// One contact's state; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PackedState {
    /// At most one conversation, in range, and no evicted messaged day.
    Compact {
        last_start_day: i32,
        last_organic_day: i32,
        conv: Option<CompactConv>,
    },
    /// Anything else, as the fold holds it.
    Wide(Box<ContactState>),
}

impl Default for PackedState {
    fn default() -> Self {
        PackedState::Compact {
            last_start_day: NO_DAY,
            last_organic_day: NO_DAY,
            conv: None,
        }
    }
}

impl PackedState {
    /// The packed form of `state`: compact when it fits, boxed otherwise.
    pub(super) fn pack(mut state: ContactState) -> PackedState {
        PackedState::pack_from(&mut state, None)
    }

    /// [`PackedState::pack`], taking what it keeps out of `state` and reusing
    /// `spare` for the rare fields if they are set.
    #[inline]
    fn pack_from(state: &mut ContactState, spare: Option<Box<Rare>>) -> PackedState {
        if state.evicted_messaged_days.is_empty() {
            let (last_start_day, last_organic_day) = (state.last_start_day, state.last_organic_day);
            match state.convs.as_mut_slice() {
                [] => {
                    return PackedState::Compact {
                        last_start_day,
                        last_organic_day,
                        conv: None,
                    }
                }
                [conv] => {
                    if let Some(mut compact) = CompactConv::narrow(conv) {
                        compact.rare = Rare::take_from(conv, spare);
                        return PackedState::Compact {
                            last_start_day,
                            last_organic_day,
                            conv: Some(compact),
                        };
                    }
                }
                _ => {}
            }
        }
        PackedState::Wide(Box::new(std::mem::take(state)))
    }

    /// A copy of the state as the fold holds it.
    pub(super) fn unpack(&self) -> ContactState {
        match self {
            PackedState::Compact {
                last_start_day,
                last_organic_day,
                conv,
            } => ContactState {
                convs: conv.iter().map(CompactConv::unpack).collect(),
                last_start_day: *last_start_day,
                last_organic_day: *last_organic_day,
                evicted_messaged_days: Vec::new(),
            },
            PackedState::Wide(state) => (**state).clone(),
        }
    }

    /// Takes the state out, leaving the empty one.
    pub(super) fn take(&mut self) -> ContactState {
        self.take_parts().0
    }

    /// Takes the state out, leaving the empty one, with the box of its rare
    /// fields (emptied) for [`PackedState::pack_from`].
    #[inline]
    fn take_parts(&mut self) -> (ContactState, Option<Box<Rare>>) {
        match std::mem::take(self) {
            PackedState::Compact {
                last_start_day,
                last_organic_day,
                conv,
            } => {
                let mut convs = SmallVec::new();
                let mut spare = None;
                if let Some(mut conv) = conv {
                    spare = conv.rare.take();
                    let rare = spare
                        .as_deref_mut()
                        .map_or(Rare::UNSET, |r| std::mem::replace(r, Rare::UNSET));
                    convs.push(conv.to_conv(rare));
                }
                let state = ContactState {
                    convs,
                    last_start_day,
                    last_organic_day,
                    evicted_messaged_days: Vec::new(),
                };
                (state, spare)
            }
            PackedState::Wide(state) => (*state, None),
        }
    }

    /// Runs `f` on the state as the fold holds it, then packs the result.
    pub(super) fn with<R>(&mut self, f: impl FnOnce(&mut ContactState) -> R) -> R {
        if let PackedState::Wide(state) = self {
            // Changed in place: no allocation while it stays wide.
            let result = f(state);
            let compact = state.evicted_messaged_days.is_empty()
                && match state.convs.as_slice() {
                    [] => true,
                    [conv] => CompactConv::fits(conv),
                    _ => false,
                };
            if compact {
                *self = PackedState::pack_from(state, None);
            }
            return result;
        }
        // The rare fields' box is reused: no allocation per event.
        let (mut state, spare) = self.take_parts();
        let result = f(&mut state);
        *self = PackedState::pack_from(&mut state, spare);
        result
    }

    /// The number of conversations held.
    pub(super) fn conversations(&self) -> usize {
        match self {
            PackedState::Compact { conv, .. } => usize::from(conv.is_some()),
            PackedState::Wide(state) => state.convs.len(),
        }
    }
}

/// A conversation whose times are within `u32::MAX - 1` ms (49.7 days) of its
/// start and whose counters fit in a `u16`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CompactConv {
    started_at: i64,
    rare: Option<Box<Rare>>,
    // Milliseconds after `started_at`, or ABSENT.
    last_activity: u32,
    first_click: u32,
    first_inbound: u32,
    first_reply: u32,
    ad: u32,
    start_day: i32,
    clicks: u16,
    inbound: u16,
    outbound: u16,
    out_free: u16,
    out_after: u16,
    out_billable: u16,
    followups: u16,
    awaiting_reply: bool,
}

/// The fields of a conversation that most conversations never set.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rare {
    qualified_at: i64,
    first_purchase_at: i64,
    revenue: i64,
    purchases: u32,
    click_id: Option<Arc<str>>,
    click_at: i64,
}

fn since(started_at: i64, t: i64) -> Option<u32> {
    if t == NONE {
        return Some(ABSENT);
    }
    t.checked_sub(started_at)
        .and_then(|ms| u32::try_from(ms).ok())
        .filter(|&ms| ms != ABSENT)
}

fn at(started_at: i64, since: u32) -> i64 {
    if since == ABSENT {
        NONE
    } else {
        started_at + i64::from(since)
    }
}

fn narrow(n: u32) -> Option<u16> {
    u16::try_from(n).ok()
}

impl CompactConv {
    fn fits(conv: &Conv) -> bool {
        Self::narrow(conv).is_some()
    }

    /// Everything but the rare fields, if every one is in range.
    #[inline]
    fn narrow(c: &Conv) -> Option<CompactConv> {
        let s = c.started_at;
        Some(CompactConv {
            started_at: s,
            rare: None,
            last_activity: since(s, c.last_activity_at)?,
            first_click: since(s, c.first_click_at)?,
            first_inbound: since(s, c.first_inbound_at)?,
            first_reply: since(s, c.first_reply_at)?,
            ad: c.ad,
            start_day: c.start_day,
            clicks: narrow(c.clicks)?,
            inbound: narrow(c.inbound)?,
            outbound: narrow(c.outbound)?,
            out_free: narrow(c.out_free)?,
            out_after: narrow(c.out_after)?,
            out_billable: narrow(c.out_billable)?,
            followups: narrow(c.followups)?,
            awaiting_reply: c.awaiting_reply,
        })
    }

    fn unpack(&self) -> Conv {
        self.to_conv(self.rare.as_deref().cloned().unwrap_or(Rare::UNSET))
    }

    #[inline]
    fn to_conv(&self, rare: Rare) -> Conv {
        let s = self.started_at;
        Conv {
            started_at: s,
            last_activity_at: at(s, self.last_activity),
            first_click_at: at(s, self.first_click),
            first_inbound_at: at(s, self.first_inbound),
            first_reply_at: at(s, self.first_reply),
            qualified_at: rare.qualified_at,
            first_purchase_at: rare.first_purchase_at,
            revenue: rare.revenue,
            ad: self.ad,
            start_day: self.start_day,
            clicks: self.clicks.into(),
            inbound: self.inbound.into(),
            outbound: self.outbound.into(),
            out_free: self.out_free.into(),
            out_after: self.out_after.into(),
            out_billable: self.out_billable.into(),
            followups: self.followups.into(),
            purchases: rare.purchases,
            awaiting_reply: self.awaiting_reply,
            click_id: rare.click_id,
            click_at: rare.click_at,
        }
    }
}

impl Rare {
    /// The rare fields of `conv`, taken out of it, in `spare` if given;
    /// none if unset.
    #[inline]
    fn take_from(conv: &mut Conv, spare: Option<Box<Rare>>) -> Option<Box<Rare>> {
        let unset = conv.qualified_at == NONE
            && conv.first_purchase_at == NONE
            && conv.revenue == 0
            && conv.purchases == 0
            && conv.click_id.is_none()
            && conv.click_at == NONE;
        if unset {
            return None;
        }
        let rare = Rare {
            qualified_at: conv.qualified_at,
            first_purchase_at: conv.first_purchase_at,
            revenue: conv.revenue,
            purchases: conv.purchases,
            click_id: conv.click_id.take(),
            click_at: conv.click_at,
        };
        Some(match spare {
            Some(mut spare) => {
                *spare = rare;
                spare
            }
            None => Box::new(rare),
        })
    }

    const UNSET: Rare = Rare {
        qualified_at: NONE,
        first_purchase_at: NONE,
        revenue: 0,
        purchases: 0,
        click_id: None,
        click_at: NONE,
    };
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn time() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(NONE),
            Just(i64::MAX),
            any::<i64>(),
            0i64..(1 << 33),
            Just(i64::from(ABSENT)),
            Just(i64::from(ABSENT) - 1),
        ]
    }

    fn count() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..4, Just(65_535), Just(65_536), any::<u32>()]
    }

    prop_compose! {
        fn conv()(
            started_at in prop_oneof![Just(0i64), any::<i64>()],
            times in prop::array::uniform6(time()),
            counts in prop::array::uniform8(count()),
            revenue in prop_oneof![Just(0i64), any::<i64>()],
            ad in any::<u32>(),
            start_day in any::<i32>(),
            awaiting_reply in any::<bool>(),
            click_id in prop::option::of("[a-z]{0,3}"),
            click_at in time(),
        ) -> Conv {
            // Near the start, as the fold makes them, or anywhere.
            let t = |i: usize| if times[i] == NONE { NONE } else { times[i].wrapping_add(started_at) };
            Conv {
                started_at,
                last_activity_at: t(0),
                first_click_at: t(1),
                first_inbound_at: t(2),
                first_reply_at: t(3),
                qualified_at: t(4),
                first_purchase_at: t(5),
                revenue,
                ad,
                start_day,
                clicks: counts[0],
                inbound: counts[1],
                outbound: counts[2],
                out_free: counts[3],
                out_after: counts[4],
                out_billable: counts[5],
                followups: counts[6],
                purchases: counts[7],
                awaiting_reply,
                click_id: click_id.map(Arc::from),
                click_at,
            }
        }
    }

    prop_compose! {
        fn state()(
            convs in prop::collection::vec(conv(), 0..3),
            last_start_day in any::<i32>(),
            last_organic_day in any::<i32>(),
            evicted_messaged_days in prop::collection::vec(any::<i32>(), 0..2),
        ) -> ContactState {
            ContactState {
                convs: convs.into_iter().collect(),
                last_start_day,
                last_organic_day,
                evicted_messaged_days,
            }
        }
    }

    /// Times within `u32::MAX - 1` ms after the start, counters within `u16`.
    fn in_range(c: &Conv) -> bool {
        let times = [
            c.last_activity_at,
            c.first_click_at,
            c.first_inbound_at,
            c.first_reply_at,
        ];
        let counts = [
            c.clicks,
            c.inbound,
            c.outbound,
            c.out_free,
            c.out_after,
            c.out_billable,
            c.followups,
        ];
        times.iter().all(|&t| {
            t == NONE
                || (i128::from(t) - i128::from(c.started_at)) < i128::from(u32::MAX)
                    && t >= c.started_at
        }) && counts.iter().all(|&n| n <= 65_535)
    }

    proptest! {
        #[test]
        fn packing_keeps_every_field(state in state()) {
            let mut packed = PackedState::pack(state.clone());
            prop_assert_eq!(&packed.unpack(), &state);
            prop_assert_eq!(packed.conversations(), state.convs.len());
            let compact = matches!(packed, PackedState::Compact { .. });
            let fits = state.evicted_messaged_days.is_empty()
                && state.convs.len() <= 1
                && state.convs.iter().all(in_range);
            prop_assert_eq!(compact, fits);
            prop_assert_eq!(packed.with(|s| s.clone()), state.clone());
            prop_assert_eq!(packed.take(), state);
            prop_assert_eq!(packed, PackedState::default());
        }

        #[test]
        fn a_changed_state_is_packed_again(before in state(), after in state()) {
            let mut packed = PackedState::pack(before);
            packed.with(|s| *s = after.clone());
            prop_assert_eq!(&packed, &PackedState::pack(after));
        }
    }
}
