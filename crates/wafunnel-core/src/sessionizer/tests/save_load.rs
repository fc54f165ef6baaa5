//! Saving and loading the state: refusals and errors. That a loaded state
//! goes on exactly like the saved one is a property test.

use std::io::{self, Write};

use super::*;
use crate::sessionizer::state::FORMAT_VERSION;

/// A drained state with something in every part: conversations, kept
/// events, organic days, spend, ad names.
fn drained() -> Sessionizer {
    let mut s = Sessionizer::new(3, Windows::default(), accounts());
    for e in [
        click("c1", "u1", T0, "ad_1"),
        msg_in("m1", "u1", T0 + MIN, Some("ad_1")),
        msg_out("o1", "u1", T0 + 2 * MIN),
        msg_in("m2", "u2", T0 + 3 * MIN, None),
        lead("l1", "u1", T0 + 4 * MIN, None),
        purchase("p1", "u1", T0 + 5 * MIN, "49.90"),
        spend("s1", T0 + 6 * MIN, "ad_1", "2026-03-02", "100", 7),
        click("c0", "u3", T0 - MIN, "ad_2"),
    ] {
        s.apply(&e);
    }
    s.drain();
    s
}

fn saved(s: &Sessionizer) -> Vec<u8> {
    let mut bytes = Vec::new();
    s.save(&mut bytes).expect("a drained state saves");
    bytes
}

#[test]
fn saving_with_rows_pending_is_refused() {
    let mut s = drained();
    s.apply(&click("c2", "u1", T0 + HOUR_MS, "ad_1"));
    let mut bytes = Vec::new();
    assert!(matches!(s.save(&mut bytes), Err(StateError::Undrained)));
    s.drain();
    s.save(&mut bytes).expect("drained now");
}

#[test]
fn a_loaded_state_keeps_the_partition_counts_and_watermark() {
    let s = drained();
    let loaded = Sessionizer::load(Windows::default(), accounts(), &saved(&s)).expect("valid");
    assert_eq!(loaded.partition(), 3);
    assert_eq!(loaded.outcome_counts(), s.outcome_counts());
    assert_eq!(loaded.watermark(), s.watermark());
    assert_eq!(loaded.stats(), s.stats());
    let empty = Sessionizer::new(0, Windows::default(), accounts());
    let loaded = Sessionizer::load(Windows::default(), accounts(), &saved(&empty)).expect("valid");
    assert_eq!(loaded.watermark(), None);
}

#[test]
fn truncated_or_extended_bytes_are_a_decode_error() {
    let bytes = saved(&drained());
    for len in 0..bytes.len() {
        let result = Sessionizer::load(Windows::default(), accounts(), &bytes[..len]);
        assert!(
            matches!(result, Err(StateError::Decode(_))),
            "{len} of {} bytes: {result:?}",
            bytes.len()
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let result = Sessionizer::load(Windows::default(), accounts(), &longer);
    assert!(matches!(result, Err(StateError::Decode(_))), "{result:?}");
}

/// `drained()` as saved by the last build that wrote version 3 (commit faf3736).
const DRAINED_V3: &[u8] = include_bytes!("golden/drained_v3.snapshot");

#[test]
fn a_version_3_snapshot_loads_as_the_same_state_and_goes_on_alike() {
    let (version, _) = postcard::take_from_bytes::<u32>(DRAINED_V3).expect("a version");
    assert_eq!(version, 3);
    let mut upgraded =
        Sessionizer::load(Windows::default(), accounts(), DRAINED_V3).expect("version 3 is read");
    let mut current = drained();
    assert_eq!(saved(&upgraded), saved(&current));
    // Past every window: the maintenance rebuilt from the contacts' due
    // times closes and evicts what the saved schedule would have.
    for e in [
        msg_in("m3", "u1", T0 + 2 * HOUR_MS, Some("ad_1")),
        click("c9", "u9", T0 + 30 * DAY_MS, "ad_2"),
    ] {
        assert_eq!(upgraded.apply(&e), current.apply(&e));
    }
    assert_eq!(upgraded.drain(), current.drain());
    assert_eq!(saved(&upgraded), saved(&current));
}

#[test]
fn another_format_version_is_refused() {
    let bytes = saved(&drained());
    let (_, state) = postcard::take_from_bytes::<u32>(&bytes).expect("a version");
    let mut newer = postcard::to_stdvec(&(FORMAT_VERSION + 1)).expect("encodes");
    newer.extend_from_slice(state);
    let result = Sessionizer::load(Windows::default(), accounts(), &newer);
    assert!(
        matches!(
            result,
            Err(StateError::Version { found, expected })
                if found == FORMAT_VERSION + 1 && expected == FORMAT_VERSION
        ),
        "{result:?}"
    );
}

/// Accepts `room` bytes, then fails like a full disk.
#[derive(Debug)]
struct FailingWriter {
    room: usize,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_writer_is_an_encode_error_with_its_own_error() {
    // More than the save buffer holds, so that writes fail mid-encoding too.
    let mut s = drained();
    for u in 0..2000 {
        s.apply(&click(&format!("b{u}"), &format!("b{u}"), T0 + u, "ad_1"));
    }
    s.drain();
    let len = saved(&s).len();
    assert!(len > 1 << 16, "{len}");
    for room in [0, len / 2, len - 1] {
        let result = s.save(FailingWriter { room });
        match result {
            Err(StateError::Encode(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::StorageFull);
                assert_eq!(e.to_string(), "disk full");
            }
            other => panic!("room {room}: {other:?}"),
        }
    }
    s.save(FailingWriter { room: len })
        .expect("exactly enough room");
}
