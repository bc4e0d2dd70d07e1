//! What a node does with a peer's batch of replica requests (`PeerRequest::Batch`): its writes
//! go to the writer together (one group commit), its reads to the store, and the answers go
//! back in order, the largest copies refused when they would not fit one answer frame. The
//! node's dispatch and the simulator both serve batches through [`BatchPlan`].

use cairn_layout::Layout;
use cairn_proto::limits::FRAME_BYTES_MAX;
use cairn_proto::{BatchAnswer, BatchItem, ErrorReply, LimitError, NodeId};

use crate::version::Object;
use crate::writer::Write;

/// Room for the copies of one batch answer: half a frame, the rest holding the items' tags and
/// error texts.
pub const BATCH_ANSWER_COPY_BYTES_MAX: usize = FRAME_BYTES_MAX / 2;

/// Why this node refuses a copy of `key` sent without a hint (a transfer, a hint delivered, a
/// repair, a replica write), if it does: it replicates the key in no live version of the
/// `layout` it holds (or holds none). Its cleanup would drop such a copy as one no version
/// needs, after the sender counted it as delivered: a node whose layout is behind (it lost its
/// data directory with the version the transfer is for) refuses instead, and the sender tries
/// again once it caught up. A copy kept for another node (`hint_for`) is always taken.
pub fn copy_refused(
    layout: Option<&Layout>,
    me: NodeId,
    key: &[u8],
    hint_for: Option<NodeId>,
) -> Option<ErrorReply> {
    if hint_for.is_some() {
        return None;
    }
    let Some(layout) = layout else {
        return Some(ErrorReply::Refused {
            reason: "this node holds no layout yet: it takes copies once it has one".into(),
        });
    };
    let p = layout.current().ring().config().partition_of(key);
    (!layout.replicates(me, p)).then(|| ErrorReply::Refused {
        reason: format!(
            "not a replica of partition {p} in the layout this node holds (version {}): \
             its layout may be behind",
            layout.current().version()
        ),
    })
}

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
    /// Splits `items`; an object that does not decode is answered `Malformed` at once, and a
    /// copy `refuse` refuses (see [`copy_refused`]) is answered with its refusal.
    pub fn new(
        items: Vec<BatchItem>,
        refuse: impl Fn(&[u8], Option<NodeId>) -> Option<ErrorReply>,
    ) -> BatchPlan {
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
                } => match (Object::decode(&object), refuse(&key, hint_for)) {
                    (Ok(_), Some(refusal)) => plan.answers[i] = Some(Err(refusal)),
                    (Ok(object), None) => {
                        plan.writes.push((key, Write::Merge { object, hint_for }));
                        plan.write_at.push(i);
                    }
                    (Err(e), _) => {
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
        let plan = BatchPlan::new(items, |_, _| None);
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
    fn a_copy_without_a_hint_is_refused_by_a_node_its_layout_gives_no_part_in_the_key() {
        use cairn_layout::LayoutVersion;
        use cairn_ring::{Member, RingConfig};
        let config = RingConfig {
            partitions: 8,
            replicas: 2,
        };
        let ids: Vec<NodeId> = (1..=3)
            .map(|i| NodeId::from_name(&format!("node{i}")))
            .collect();
        let mut members: Vec<(Member, String)> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (Member::new(id), format!("node{}", i + 1)))
            .collect();
        members.sort_by_key(|(m, _)| m.id);
        let layout = Layout::new(LayoutVersion::initial(config, &members).unwrap());
        let key = b"k";
        let p = config.partition_of(key);
        let owner = *ids.iter().find(|&&n| layout.replicates(n, p)).unwrap();
        let other = *ids.iter().find(|&&n| !layout.replicates(n, p)).unwrap();
        assert_eq!(copy_refused(Some(&layout), owner, key, None), None);
        let refusal = copy_refused(Some(&layout), other, key, None).unwrap();
        assert!(
            refusal.to_string().contains("not a replica of partition"),
            "{refusal}"
        );
        // A fallback's copy, kept for the owner, is always taken.
        assert_eq!(copy_refused(Some(&layout), other, key, Some(owner)), None);
        // No layout yet: nothing without a hint.
        assert!(copy_refused(None, owner, key, None).is_some());
        assert_eq!(copy_refused(None, owner, key, Some(other)), None);
    }

    #[test]
    fn copies_over_the_answer_room_are_refused_largest_first() {
        let big = vec![b'x'; BATCH_ANSWER_COPY_BYTES_MAX / 2 + 10];
        let items = (0..3).map(|i| BatchItem::Read { key: vec![i] }).collect();
        let plan = BatchPlan::new(items, |_, _| None);
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
