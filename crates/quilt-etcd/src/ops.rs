//! Building requests: key ranges, reads, writes and the compares of a transaction.

use crate::pb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, compare, request_op,
};

/// The end of the range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

/// Reads one key.
pub fn get(key: impl Into<Vec<u8>>) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

/// Reads every key that starts with `prefix`.
pub fn with_prefix(prefix: impl Into<Vec<u8>>) -> RangeRequest {
    let key = prefix.into();
    RangeRequest {
        range_end: prefix_end(&key),
        key,
        ..Default::default()
    }
}

/// Reads keys in `[from, end)`, at most `limit` of them, keys only.
pub fn keys_between(from: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>, limit: i64) -> RangeRequest {
    RangeRequest {
        key: from.into(),
        range_end: end.into(),
        limit,
        keys_only: true,
        ..Default::default()
    }
}

/// A read inside a transaction.
pub fn read(range: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(range)),
    }
}

/// A write inside a transaction.
pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

/// A deletion of one key inside a transaction.
pub fn delete(key: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.into(),
                ..Default::default()
            },
        )),
    }
}

/// Holds when `key` does not exist.
pub fn absent(key: impl Into<Vec<u8>>) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.into(),
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
    }
}

/// Holds when `key` exists.
pub fn present(key: impl Into<Vec<u8>>) -> Compare {
    Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.into(),
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
    }
}

/// Holds when `key` last changed at `revision` (0: the key does not exist): nobody wrote
/// it since it was read.
pub fn unchanged_since(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.into(),
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"/quilt/"), b"/quilt0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
