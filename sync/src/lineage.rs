//! Which copies of a database lie on the same line of history.
//!
//! Every transaction is numbered (txid) and stamped with the epoch of the
//! primary that committed it. A new primary continues the txid sequence from
//! where its copy stood, in its own epoch: that point is an [`EpochStart`].
//! The list of them is the database's *history* (as PostgreSQL's timeline
//! history files are): the primary keeps it and gives it to its standby, so
//! that either can later judge a copy that comes back.
//!
//! A copy that rejoins at position `(e, t)` is on this node's line if, where
//! this line left epoch `e` (the first start of a later epoch), it had
//! reached at least txid `t` and, at exactly that txid, with the same sum.
//! Otherwise the copy holds transactions this line never had: it *diverged*
//! after the common point, and must be quarantined, never overwritten.

use crate::dbsum::{DbPosition, TxId};
use crate::message::Epoch;
use serde::{Deserialize, Serialize};

/// Epoch `epoch` began on this line after the transaction at `from`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: Epoch,
    pub from: DbPosition,
}

/// What [`judge`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lineage {
    /// As far as the history tells, the copy is on this line (behind, level
    /// or, within the newest epoch, to be checked by sum and txid).
    OnLine,
    /// The copy holds transactions `first..=last` that this line does not
    /// have; the common point is at most txid `common`.
    Diverged {
        common: TxId,
        first: TxId,
        last: TxId,
    },
}

/// Judges a copy at `theirs` against this line's `history`.
pub fn judge(history: &[EpochStart], theirs: DbPosition) -> Lineage {
    let Some(left) = history
        .iter()
        .filter(|h| h.epoch > theirs.epoch)
        .min_by_key(|h| h.epoch)
    else {
        return Lineage::OnLine;
    };
    let fork = left.from;
    let diverged = |common: TxId| Lineage::Diverged {
        common,
        first: common.next(),
        last: theirs.txid.max(common.next()),
    };
    if fork.epoch < theirs.epoch {
        // This line never had epoch `theirs.epoch` at all: everything the
        // copy committed in it is foreign; where that began is not known
        // here, at most at the fork.
        return diverged(TxId(fork.txid.0.min(theirs.txid.0.saturating_sub(1))));
    }
    if theirs.txid > fork.txid {
        return diverged(fork.txid);
    }
    if theirs.txid == fork.txid && theirs.sum != fork.sum {
        return diverged(TxId(fork.txid.0.saturating_sub(1)));
    }
    Lineage::OnLine
}

/// Appends the start of `epoch` at `from`, unless the history already has
/// that epoch or a later one. Returns whether it changed.
pub fn record_start(history: &mut Vec<EpochStart>, epoch: Epoch, from: DbPosition) -> bool {
    if history.iter().any(|h| h.epoch >= epoch) {
        return false;
    }
    history.push(EpochStart { epoch, from });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbsum::DbSum;

    fn pos(epoch: u64, txid: u64, sum: u8) -> DbPosition {
        DbPosition {
            epoch: Epoch(epoch),
            txid: TxId(txid),
            sum: DbSum([sum; 32]),
        }
    }

    fn start(epoch: u64, from: DbPosition) -> EpochStart {
        EpochStart {
            epoch: Epoch(epoch),
            from,
        }
    }

    #[test]
    fn a_copy_in_the_current_epoch_is_on_the_line() {
        let h = [start(6, pos(5, 100, 1))];
        assert_eq!(judge(&h, pos(6, 130, 9)), Lineage::OnLine);
        assert_eq!(judge(&[], pos(3, 10, 9)), Lineage::OnLine);
    }

    #[test]
    fn an_old_primary_with_unshipped_transactions_diverged_after_the_fork() {
        // Killed at txid 105 of epoch 5; the standby took over at 100.
        let h = [start(6, pos(5, 100, 1))];
        assert_eq!(
            judge(&h, pos(5, 105, 7)),
            Lineage::Diverged {
                common: TxId(100),
                first: TxId(101),
                last: TxId(105)
            }
        );
    }

    #[test]
    fn a_copy_behind_or_at_the_fork_is_on_the_line() {
        let h = [start(6, pos(5, 100, 1))];
        assert_eq!(judge(&h, pos(5, 100, 1)), Lineage::OnLine);
        assert_eq!(judge(&h, pos(5, 90, 3)), Lineage::OnLine);
        assert_eq!(judge(&h, pos(4, 10, 3)), Lineage::OnLine);
    }

    #[test]
    fn the_same_txid_with_another_sum_diverged() {
        let h = [start(6, pos(5, 100, 1))];
        assert!(matches!(
            judge(&h, pos(5, 100, 2)),
            Lineage::Diverged {
                common: TxId(99),
                ..
            }
        ));
    }

    #[test]
    fn the_first_later_epoch_decides_and_a_skipped_epoch_is_foreign() {
        let h = [start(5, pos(3, 50, 1)), start(7, pos(5, 80, 2))];
        // Epoch 5 ran to txid 80 on this line.
        assert_eq!(judge(&h, pos(5, 70, 4)), Lineage::OnLine);
        assert!(matches!(judge(&h, pos(5, 81, 4)), Lineage::Diverged { .. }));
        // This line never had epoch 4.
        assert!(matches!(judge(&h, pos(4, 45, 4)), Lineage::Diverged { .. }));
        assert_eq!(judge(&h, pos(3, 50, 1)), Lineage::OnLine);
    }

    #[test]
    fn a_start_is_recorded_once_and_in_order() {
        let mut h = Vec::new();
        assert!(record_start(&mut h, Epoch(2), pos(1, 5, 1)));
        assert!(!record_start(&mut h, Epoch(2), pos(1, 9, 1)));
        assert!(!record_start(&mut h, Epoch(1), pos(0, 1, 1)));
        assert!(record_start(&mut h, Epoch(4), pos(2, 9, 1)));
        assert_eq!(h.len(), 2);
    }
}
