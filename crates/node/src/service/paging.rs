//! Paged list replies: bounded by items and bytes, chained by a token.

use tonic::Status;

/// Most items in one page of a list.
pub(super) const PAGE_ITEMS: usize = 1_000;
/// Most bytes in one page of a list: well under a client's 4 MiB decode limit.
pub(super) const PAGE_BYTES: usize = 1 << 20;

/// One page of `items`: at most `limit` (0: [`PAGE_ITEMS`]) and about [`PAGE_BYTES`] encoded
/// (always at least one item), with the token of the next page (empty on the last).
pub(super) fn page<'a, T: 'a, M: prost::Message>(
    items: impl Iterator<Item = &'a T>,
    limit: u32,
    to_msg: impl Fn(&'a T) -> M,
    token: impl Fn(&'a T) -> String,
) -> (Vec<M>, String) {
    let limit = if limit == 0 {
        PAGE_ITEMS
    } else {
        (limit as usize).min(PAGE_ITEMS)
    };
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    let mut items = items.peekable();
    for item in items.by_ref() {
        let m = to_msg(item);
        bytes += m.encoded_len();
        out.push(m);
        last = Some(item);
        if out.len() >= limit || bytes >= PAGE_BYTES {
            break;
        }
    }
    let next = match (items.peek(), last) {
        (Some(_), Some(l)) => token(l),
        _ => String::new(),
    };
    (out, next)
}

/// A task page token: `SUBMITTED_MS:ID`.
pub(super) fn parse_task_token(s: &str) -> Result<Option<(u64, String)>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument("bad page token");
    let (ms, id) = s.split_once(':').ok_or_else(bad)?;
    if id.len() > blixard_core::task::MAX_TASK_ID_LEN {
        return Err(bad());
    }
    Ok(Some((ms.parse().map_err(|_| bad())?, id.to_string())))
}

#[cfg(test)]
mod tests {
    use blixard_api::pb;

    use super::*;

    #[test]
    fn pages_are_bounded_and_chain_by_token() {
        let items: Vec<u64> = (0..10).collect();
        let msg = |v: &u64| pb::Member {
            id: *v,
            addr: "x".repeat(600_000),
            role: String::new(),
        };
        // Bytes: two 600 kB items pass 1 MiB, so the page ends after the second.
        let (got, next) = page(items.iter(), 0, msg, |v| v.to_string());
        assert_eq!((got.len(), next.as_str()), (2, "1"));
        // Count: a small limit.
        let small = |v: &u64| pb::Member {
            id: *v,
            addr: String::new(),
            role: String::new(),
        };
        let (got, next) = page(items.iter(), 4, small, |v| v.to_string());
        assert_eq!(
            (got.iter().map(|m| m.id).collect::<Vec<_>>(), next.as_str()),
            (vec![0, 1, 2, 3], "3")
        );
        // The last page has no token.
        let (got, next) = page(items[8..].iter(), 4, small, |v| v.to_string());
        assert_eq!((got.len(), next.as_str()), (2, ""));
        assert_eq!(
            parse_task_token("12:t-1").unwrap(),
            Some((12, "t-1".to_string()))
        );
        assert!(parse_task_token("nonsense").is_err());
    }
}
