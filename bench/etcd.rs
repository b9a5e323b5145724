//! etcd's v3 KV API (the subset in `proto/etcd/kv.proto`) and compare-and-swap as an
//! etcd transaction.

#![allow(clippy::all)]

tonic::include_proto!("etcdserverpb");

/// Puts `value` if the key's mod revision is `expected` (0: the key does not exist);
/// otherwise reads the key, to learn its current revision.
pub fn cas(key: Vec<u8>, expected: u64, value: Vec<u8>) -> TxnRequest {
    let compare = Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::ModRevision(expected as i64)),
    };
    let put =
        RequestOp { request: Some(request_op::Request::RequestPut(PutRequest { key: key.clone(), value, lease: 0 })) };
    let read =
        RequestOp { request: Some(request_op::Request::RequestRange(RangeRequest { key, ..Default::default() })) };
    TxnRequest { compare: vec![compare], success: vec![put], failure: vec![read] }
}

/// (succeeded, the key's revision now) from the answer to [`cas`].
pub fn cas_outcome(answer: &TxnResponse) -> (bool, u64) {
    if answer.succeeded {
        return (true, answer.header.as_ref().map_or(0, |h| h.revision as u64));
    }
    let current = answer.responses.iter().find_map(|r| match &r.response {
        Some(response_op::Response::ResponseRange(range)) => Some(range.kvs.first().map_or(0, |kv| kv.mod_revision)),
        _ => None,
    });
    (false, current.unwrap_or(0) as u64)
}
