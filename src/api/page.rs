//! One page of a keyset-paginated list, and the cursor of the next.
//!
//! Every list asks the store for one row more than the page holds: that row only tells that
//! another page exists, so the last page needs no extra query and says so (no cursor).

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(nullable = true)]
    pub next_cursor: Option<String>,
}

/// How many rows to ask the store for, to fill a page of `limit`.
pub fn fetch_limit(limit: i64) -> i64 {
    limit + 1
}

/// The rows of a page out of `rows` (fetched with [`fetch_limit`]), and the cursor of the next
/// page, made by `cursor` from the page's last row, when there is one.
pub fn split<R>(
    mut rows: Vec<R>,
    limit: i64,
    cursor: impl FnOnce(&R) -> String,
) -> (Vec<R>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(cursor);
        (rows, next)
    } else {
        (rows, None)
    }
}

impl<T> Page<T> {
    /// The page of `rows` (fetched with [`fetch_limit`]), each turned into its answer item.
    pub fn of<R>(
        rows: Vec<R>,
        limit: i64,
        cursor: impl FnOnce(&R) -> String,
        item: impl FnMut(R) -> T,
    ) -> Page<T> {
        let (rows, next_cursor) = split(rows, limit, cursor);
        Page {
            items: rows.into_iter().map(item).collect(),
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extra_row_makes_the_cursor() {
        let page = Page::of(vec![1, 2, 3], 2, |r| format!("after {r}"), |r| r * 10);
        assert_eq!(page.items, vec![10, 20]);
        assert_eq!(page.next_cursor.as_deref(), Some("after 2"));
        let last = Page::of(vec![1, 2], 2, |r| format!("after {r}"), |r| r);
        assert_eq!(last.items, vec![1, 2]);
        assert_eq!(last.next_cursor, None);
        let empty = Page::<i32>::of(Vec::new(), 2, |r: &i32| r.to_string(), |r| r);
        assert!(empty.items.is_empty() && empty.next_cursor.is_none());
    }
}
