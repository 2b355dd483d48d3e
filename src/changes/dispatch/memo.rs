//! Receivers kept for the next change that matches alike. A change to a table whose
//! subscribers all take every row (no filter, no claim key: staff dashboards on a table,
//! a fan-out to thousands) finds the same members, with the same viewers, as the change
//! to that table before it, until someone joins, leaves or refreshes a token (the
//! index's generation moves on) or row scope's gates change. Such a change shares the
//! receivers found before instead of walking every member and viewer again.

use std::sync::{Arc, Mutex};

use crate::changes::index::Matched;
use crate::changes::row::{Change, Op};
use crate::changes::scope::{Gates, Viewer};

/// A change's matched members and their distinct viewers.
pub(super) struct Receivers {
    pub matched: Vec<Matched>,
    /// Index into `viewers` for each matched member.
    pub viewer_of: Vec<usize>,
    pub viewers: Vec<Arc<Viewer>>,
}

/// At most this many (table, operation) sets are kept ...
const MAX_SETS: usize = 32;
/// ... and at most this many matched members in all of them.
const MAX_MEMBERS: usize = 100_000;

#[derive(Default)]
pub(in crate::changes) struct Memo {
    kept: Mutex<Option<Kept>>,
}

/// Sets found at one index generation under one set of gates.
struct Kept {
    generation: u64,
    /// Held, so that a later `Arc` of other gates cannot take its address.
    gates: Arc<Gates>,
    sets: Vec<(String, String, Op, Arc<Receivers>)>,
}

impl Kept {
    fn current(&self, generation: u64, gates: &Arc<Gates>) -> bool {
        self.generation == generation && Arc::ptr_eq(&self.gates, gates)
    }

    /// Receivers in all sets.
    fn members(&self) -> usize {
        self.sets.iter().map(|(.., set)| set.matched.len()).sum()
    }
}

impl Memo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The receivers kept for `change`'s table and operation, if the index is still at
    /// `generation` and the gates are `gates`. Sets kept at an older generation are let
    /// go here (they may hold members that left).
    pub(super) fn get(
        &self,
        generation: u64,
        gates: &Arc<Gates>,
        change: &Change,
    ) -> Option<Arc<Receivers>> {
        let mut kept = self.lock();
        if !kept.as_ref()?.current(generation, gates) {
            *kept = None;
            return None;
        }
        kept.as_ref()?
            .sets
            .iter()
            .find(|(schema, table, op, _)| {
                *op == change.op && *table == change.table && *schema == change.schema
            })
            .map(|(.., set)| set.clone())
    }

    /// Keeps `set` for the next changes to `change`'s table and operation (found at
    /// `generation` under `gates`, the index saying it holds for every row).
    pub(super) fn keep(
        &self,
        generation: u64,
        gates: &Arc<Gates>,
        change: &Change,
        set: &Arc<Receivers>,
    ) {
        let mut kept = self.lock();
        let current = kept.as_ref().is_some_and(|k| k.current(generation, gates));
        let full = kept.as_ref().is_some_and(|k| {
            k.sets.len() >= MAX_SETS || k.members() + set.matched.len() > MAX_MEMBERS
        });
        if !current || full {
            *kept = None;
        }
        if set.matched.len() > MAX_MEMBERS {
            return;
        }
        let k = kept.get_or_insert_with(|| Kept {
            generation,
            gates: gates.clone(),
            sets: Vec::new(),
        });
        k.sets.push((
            change.schema.clone(),
            change.table.clone(),
            change.op,
            set.clone(),
        ));
    }

    /// Lets go of every kept set (dispatch is idle).
    pub(super) fn release(&self) {
        *self.lock() = None;
    }
}
