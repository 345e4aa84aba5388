//! Undelivered pushes, logged as a tally: one line per reason and interval with a count and
//! one example, so a push to 250,000 offline users is one line, not 250,000 (the metrics and
//! the Kafka reports still carry every one).

use crate::metrics::{LabelSet, UndeliveredReason};

use super::shard::Undelivered;

/// One reason's count since the last flush, and the first push that had it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Line {
    pub count: u64,
    /// How many of them are in their user's stream: a resume still gets those.
    pub stored: u64,
    pub biz_id: u64,
    pub user_id: String,
    pub key: String,
    /// The example's place in its stream (0: not stored).
    pub offset: u64,
}

#[derive(Debug, Default)]
pub struct Tally {
    lines: [Line; UndeliveredReason::COUNT],
}

impl Tally {
    pub fn add(&mut self, u: &Undelivered) {
        let line = &mut self.lines[u.reason as usize];
        line.count += 1;
        line.stored += u64::from(u.offset > 0);
        if line.count == 1 {
            line.biz_id = u.biz_id;
            line.user_id.clone_from(&u.user_id);
            line.key.clone_from(&u.key);
            line.offset = u.offset;
        }
    }

    /// The lines to log now (reasons seen since the last call), leaving the tally empty.
    pub fn flush(&mut self) -> impl Iterator<Item = (UndeliveredReason, Line)> + '_ {
        UndeliveredReason::ALL
            .iter()
            .zip(self.lines.iter_mut())
            .filter(|(_, l)| l.count > 0)
            .map(|(r, l)| (*r, std::mem::take(l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn offline(user: &str) -> Undelivered {
        Undelivered {
            biz_id: 1,
            user_id: user.into(),
            device_id: None,
            key: "k".into(),
            body: Bytes::new(),
            reason: UndeliveredReason::Offline,
            epoch: String::new(),
            offset: 0,
            hold: None,
        }
    }

    #[test]
    fn many_reports_are_one_line_per_reason_and_flush() {
        let mut t = Tally::default();
        for i in 0..250_000 {
            t.add(&offline(&format!("u{i}")));
        }
        t.add(&Undelivered {
            reason: UndeliveredReason::SlowConsumer,
            ..offline("slow")
        });
        t.add(&Undelivered {
            offset: 7,
            ..offline("stored")
        });
        let lines: Vec<_> = t.flush().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0].0, lines[0].1.count, lines[0].1.stored),
            (UndeliveredReason::Offline, 250_001, 1)
        );
        assert_eq!(lines[0].1.user_id, "u0", "the first one is the example");
        assert_eq!(lines[1].1.count, 1);
        assert_eq!(t.flush().count(), 0, "empty after a flush");
    }
}
