//! Pages of list operations. A token (`nextToken`, `marker`) is the
//! standard base64 of the sort key of the last item returned, so a page
//! goes on after that item even when items were added or removed meanwhile.
//! AWS's tokens are opaque too; a client only hands them back.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::error::ApiError;

/// Page size when the client gives none.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page size the IoT model allows (`RegistryMaxResults`, `PageSize`).
pub(crate) const MAX_PAGE_SIZE: i64 = 250;

/// The order of the sort keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    Ascending,
    Descending,
}

/// One page of `items`, which are sorted by `key` in `order`: at most `size`
/// items after the one whose key `token` holds, and the token of the next
/// page if there are more. `param` names the token in an error.
pub(crate) fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    order: Order,
    token: Option<&str>,
    size: usize,
    param: &str,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let after = match token {
        None => None,
        Some(t) => Some(
            STANDARD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::invalid(format!("{param} {t:?} is not a token this API gave out"))
                })?,
        ),
    };
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|item| match &after {
            None => true,
            Some(a) => match order {
                Order::Ascending => key(item).as_str() > a.as_str(),
                Order::Descending => key(item).as_str() < a.as_str(),
            },
        })
        .collect();
    let more = rest.len() > size;
    rest.truncate(size);
    let next = if more {
        rest.last().map(|last| STANDARD.encode(key(last)))
    } else {
        None
    };
    Ok((rest, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_pages(items: &[&str], order: Order, size: usize) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut token = None;
        loop {
            let items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
            let (p, next) = page(
                items,
                String::clone,
                order,
                token.as_deref(),
                size,
                "nextToken",
            )
            .unwrap();
            pages.push(p);
            match next {
                None => return pages,
                Some(t) => token = Some(t),
            }
        }
    }

    #[test]
    fn pages_cover_every_item_once() {
        assert_eq!(
            all_pages(&["a", "b", "c"], Order::Ascending, 1),
            vec![vec!["a"], vec!["b"], vec!["c"]]
        );
        assert_eq!(
            all_pages(&["c", "b", "a"], Order::Descending, 2),
            vec![vec!["c", "b"], vec!["a"]]
        );
        assert_eq!(
            all_pages(&["a", "b"], Order::Ascending, 2),
            vec![vec!["a", "b"]]
        );
        assert_eq!(
            all_pages(&[], Order::Ascending, 2),
            vec![Vec::<String>::new()]
        );
    }

    #[test]
    fn a_page_goes_on_after_its_last_item_even_if_it_was_removed() {
        let token = STANDARD.encode("b");
        let (p, next) = page(
            vec!["a".to_owned(), "c".to_owned()],
            String::clone,
            Order::Ascending,
            Some(&token),
            5,
            "nextToken",
        )
        .unwrap();
        assert_eq!((p, next), (vec!["c".to_owned()], None));
    }

    #[test]
    fn a_forged_token_is_an_invalid_request() {
        let e = page(
            Vec::<String>::new(),
            String::clone,
            Order::Ascending,
            Some("!!"),
            5,
            "marker",
        )
        .unwrap_err();
        assert!(e.message.starts_with("marker \"!!\""), "{}", e.message);
    }
}
