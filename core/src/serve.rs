//! What a node does with a peer's batch of replica requests (`PeerRequest::Batch`): its writes
//! go to the writer together (one group commit), its reads to the store, and the answers go
//! back in order, the largest copies refused when they would not fit one answer frame. The
//! node's dispatch and the simulator both serve batches through [`BatchPlan`].

use cairn_proto::limits::FRAME_BYTES_MAX;
use cairn_proto::{BatchAnswer, BatchItem, ErrorReply, LimitError};

use crate::version::Object;
use crate::writer::Write;

/// Room for the copies of one batch answer: half a frame, the rest holding the items' tags and
/// error texts.
pub const BATCH_ANSWER_COPY_BYTES_MAX: usize = FRAME_BYTES_MAX / 2;

/// One batch, split into its writes and its reads, with the answers of items refused on sight.
#[derive(Debug)]
pub struct BatchPlan {
    /// The writes, in item order: each a merge of the item's object, keeping its hint.
    pub writes: Vec<(Vec<u8>, Write)>,
    /// The keys read, in item order.
    pub reads: Vec<Vec<u8>>,
    write_at: Vec<usize>,
    read_at: Vec<usize>,
    answers: Vec<Option<Result<BatchAnswer, ErrorReply>>>,
}

impl BatchPlan {
    /// Splits `items`; an object that does not decode is answered `Malformed` at once.
    pub fn new(items: Vec<BatchItem>) -> BatchPlan {
        let mut plan = BatchPlan {
            writes: Vec::new(),
            reads: Vec::new(),
            write_at: Vec::new(),
            read_at: Vec::new(),
            answers: vec![None; items.len()],
        };
        for (i, item) in items.into_iter().enumerate() {
            match item {
                BatchItem::Replicate {
                    key,
                    object,
                    hint_for,
                } => match Object::decode(&object) {
                    Ok(object) => {
                        plan.writes.push((key, Write::Merge { object, hint_for }));
                        plan.write_at.push(i);
                    }
                    Err(e) => {
                        plan.answers[i] = Some(Err(ErrorReply::Malformed {
                            reason: format!("bad object: {e}"),
                        }))
                    }
                },
                BatchItem::Read { key } => {
                    plan.reads.push(key);
                    plan.read_at.push(i);
                }
            }
        }
        plan
    }

    /// The answers, in item order, from the writes' results and the copies read (each in the
    /// order of [`BatchPlan::writes`] and [`BatchPlan::reads`]). When the copies do not fit
    /// `BATCH_ANSWER_COPY_BYTES_MAX`, the largest are answered `FrameTooLarge` instead, and the
    /// sender asks for those alone.
    pub fn answers(
        mut self,
        written: impl IntoIterator<Item = Result<(), ErrorReply>>,
        read: impl IntoIterator<Item = Result<Object, ErrorReply>>,
    ) -> Vec<Result<BatchAnswer, ErrorReply>> {
        for (&i, result) in self.write_at.iter().zip(written) {
            self.answers[i] = Some(result.map(|()| BatchAnswer::Ack));
        }
        let mut read_bytes = 0;
        for (&i, result) in self.read_at.iter().zip(read) {
            self.answers[i] = Some(result.map(|obj| {
                let bytes = obj.encode_copy();
                read_bytes += bytes.len();
                BatchAnswer::Object(bytes)
            }));
        }
        while read_bytes > BATCH_ANSWER_COPY_BYTES_MAX {
            let largest = self
                .read_at
                .iter()
                .copied()
                .filter_map(|i| match &self.answers[i] {
                    Some(Ok(BatchAnswer::Object(b))) => Some((b.len(), i)),
                    _ => None,
                })
                .max()
                .expect("read bytes come from some answer");
            read_bytes -= largest.0;
            self.answers[largest.1] = Some(Err(ErrorReply::Limit(LimitError::FrameTooLarge {
                what: "a copy in a batch answer".to_owned(),
                len: largest.0 as u64,
                max: BATCH_ANSWER_COPY_BYTES_MAX as u64,
            })));
        }
        self.answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(ErrorReply::Malformed {
                        reason: "a batch item was left unanswered".into(),
                    })
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Dot, Payload, VClock};
    use cairn_proto::{ActorId, NodeId};

    fn object(value: &[u8]) -> Object {
        let actor = ActorId {
            node: NodeId(1),
            epoch: 1,
        };
        Object::new()
            .update(
                &VClock::default(),
                Dot::new(actor, 1),
                Payload::Value(value.to_vec()),
            )
            .unwrap()
    }

    #[test]
    fn a_batch_is_answered_in_item_order_with_bad_objects_refused_on_sight() {
        let items = vec![
            BatchItem::Read {
                key: b"r1".to_vec(),
            },
            BatchItem::Replicate {
                key: b"w1".to_vec(),
                object: object(b"v").encode(),
                hint_for: None,
            },
            BatchItem::Replicate {
                key: b"bad".to_vec(),
                object: vec![0xff; 3],
                hint_for: None,
            },
            BatchItem::Read {
                key: b"r2".to_vec(),
            },
        ];
        let plan = BatchPlan::new(items);
        assert_eq!(plan.writes.len(), 1);
        assert_eq!(plan.reads, vec![b"r1".to_vec(), b"r2".to_vec()]);
        let busy = ErrorReply::Overloaded { reason: "x".into() };
        let answers = plan.answers([Ok(())], [Ok(object(b"a")), Err(busy.clone())]);
        assert_eq!(answers.len(), 4);
        assert_eq!(
            answers[0],
            Ok(BatchAnswer::Object(object(b"a").encode_copy()))
        );
        assert_eq!(answers[1], Ok(BatchAnswer::Ack));
        assert!(
            matches!(&answers[2], Err(ErrorReply::Malformed { reason }) if reason.contains("bad object"))
        );
        assert_eq!(answers[3], Err(busy));
    }

    #[test]
    fn copies_over_the_answer_room_are_refused_largest_first() {
        let big = vec![b'x'; BATCH_ANSWER_COPY_BYTES_MAX / 2 + 10];
        let items = (0..3).map(|i| BatchItem::Read { key: vec![i] }).collect();
        let plan = BatchPlan::new(items);
        let copies = [object(&big), object(&big[..100]), object(&big)];
        let answers = plan.answers([], copies.iter().cloned().map(Ok));
        let refused: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, a)| matches!(a, Err(ErrorReply::Limit(LimitError::FrameTooLarge { .. }))))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(refused.len(), 1, "one large copy is enough to refuse");
        assert_ne!(refused[0], 1, "the small copy goes");
    }
}
