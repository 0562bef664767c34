//! Unit tests of the pure helpers.

use super::prune::{next_slice, SLICE_MAX, SLICE_MIN};
use super::{disk_full, id_floor, id_val, map_err, pow2_chunks};
use fleet_q_actors::StepId;
use rusqlite::types::Value;

#[test]
fn id_floor_orders_below_ids_minted_at_or_after_it() {
    let id = StepId::generate();
    let ms = id.as_uuid().get_timestamp().unwrap().to_unix();
    let ms = (ms.0 * 1000 + u64::from(ms.1) / 1_000_000) as i64;
    let (Value::Blob(floor), Value::Blob(idb)) = (id_floor(ms), id_val(id)) else {
        unreachable!()
    };
    assert!(floor <= idb);
    let Value::Blob(later) = id_floor(ms + 1) else {
        unreachable!()
    };
    assert!(idb < later);
}

#[test]
fn chunks_are_powers_of_two_covering_every_row() {
    assert!(pow2_chunks(0).is_empty());
    assert_eq!(pow2_chunks(1), vec![(0, 1)]);
    assert_eq!(pow2_chunks(100), vec![(0, 64), (64, 32), (96, 4)]);
    assert_eq!(
        pow2_chunks(300),
        vec![(0, 128), (128, 128), (256, 32), (288, 8), (296, 4)]
    );
    for n in 0..600 {
        let c = pow2_chunks(n);
        assert_eq!(c.iter().map(|(_, l)| l).sum::<usize>(), n);
        assert!(c.iter().all(|(_, l)| l.is_power_of_two() && *l <= 128));
    }
}

#[test]
fn prune_slices_halve_on_yield_and_double_on_completion_within_bounds() {
    let mut size = SLICE_MAX;
    let mut halvings = 0;
    while size > SLICE_MIN {
        size = next_slice(size, true);
        halvings += 1;
    }
    assert_eq!(size, SLICE_MIN);
    assert_eq!(halvings, 5, "512 → 16 in five yields");
    assert_eq!(
        next_slice(SLICE_MIN, true),
        SLICE_MIN,
        "never below the floor"
    );
    let mut doublings = 0;
    while size < SLICE_MAX {
        size = next_slice(size, false);
        doublings += 1;
    }
    assert_eq!(doublings, 5);
    assert_eq!(
        next_slice(SLICE_MAX, false),
        SLICE_MAX,
        "never above the cap"
    );
    assert_eq!(next_slice(0, false), SLICE_MIN);
}

#[test]
fn a_full_disk_is_transient_and_named_and_other_errors_are_not_taken_for_it() {
    let sqlite = |code: i32| {
        map_err(
            "commit",
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        )
    };
    let full = sqlite(rusqlite::ffi::SQLITE_FULL);
    assert!(full.is_transient() && disk_full(&full), "{full}");
    let busy = sqlite(rusqlite::ffi::SQLITE_BUSY);
    assert!(busy.is_transient() && !disk_full(&busy), "{busy}");
    let corrupt = sqlite(rusqlite::ffi::SQLITE_CORRUPT);
    assert!(!corrupt.is_transient() && !disk_full(&corrupt), "{corrupt}");
}
