//! Ending a watch stream that goes silent. A server that names its keepalive interval
//! (`X-Quilt-Keepalive-Ms`) sends a line at least that often, so three intervals with
//! nothing mean a dead replica or a half-open connection; a server that names none (an
//! older one) gets no limit.

use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;

use crate::types::KEEPALIVE_HEADER;

/// How many keepalive intervals of silence end a stream.
pub const KEEPALIVE_INTERVALS: u32 = 3;

/// Why a limited byte stream ended early.
#[derive(Debug, PartialEq, Eq)]
pub enum Break<E> {
    /// The transport failed.
    Transport(E),
    /// Nothing arrived for this long.
    Silent(Duration),
}

/// The silence that ends a stream answered with `headers`: 3 x the keepalive interval the
/// server names, or none when it names none (or a value that is not a positive number of
/// milliseconds).
pub fn limit_of(headers: &HeaderMap) -> Option<Duration> {
    let ms: u64 = headers
        .get(KEEPALIVE_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (ms > 0).then(|| Duration::from_millis(ms) * KEEPALIVE_INTERVALS)
}

/// `bytes`, ended by [`Break::Silent`] when `limit` passes with no chunk (empty ones
/// count: they are the keepalive). A transport error is passed on once, then the stream
/// ends.
pub fn limited<S, B, E>(
    bytes: S,
    limit: Option<Duration>,
) -> impl Stream<Item = Result<B, Break<E>>>
where
    S: Stream<Item = Result<B, E>> + Unpin,
{
    futures::stream::unfold((bytes, false), move |(mut bytes, done)| async move {
        if done {
            return None;
        }
        let next = match limit {
            Some(limit) => match tokio::time::timeout(limit, bytes.next()).await {
                Ok(next) => next,
                Err(_) => return Some((Err(Break::Silent(limit)), (bytes, true))),
            },
            None => bytes.next().await,
        };
        match next {
            Some(Ok(chunk)) => Some((Ok(chunk), (bytes, false))),
            Some(Err(e)) => Some((Err(Break::Transport(e)), (bytes, true))),
            None => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn the_limit_is_three_keepalive_intervals_when_the_server_names_one() {
        let mut headers = HeaderMap::new();
        assert_eq!(limit_of(&headers), None, "an older server: no limit");
        headers.insert(KEEPALIVE_HEADER, HeaderValue::from_static("3000"));
        assert_eq!(limit_of(&headers), Some(Duration::from_secs(9)));
        for bad in ["0", "-1", "3s", ""] {
            headers.insert(KEEPALIVE_HEADER, HeaderValue::from_static(bad));
            assert_eq!(limit_of(&headers), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_stream_that_sends_nothing_ends_silent() {
        let never = futures::stream::pending::<Result<Vec<u8>, String>>();
        let got: Vec<_> = limited(never, Some(Duration::from_millis(20)))
            .collect()
            .await;
        assert_eq!(got, vec![Err(Break::Silent(Duration::from_millis(20)))]);
    }

    #[tokio::test]
    async fn chunks_and_errors_pass_and_an_error_ends_the_stream() {
        let chunks: Vec<Result<&[u8], String>> =
            vec![Ok(b"a\n"), Ok(b""), Err("reset".into()), Ok(b"never\n")];
        let got: Vec<_> = limited(futures::stream::iter(chunks), None).collect().await;
        assert_eq!(
            got,
            vec![
                Ok(&b"a\n"[..]),
                Ok(&b""[..]),
                Err(Break::Transport("reset".to_string()))
            ]
        );
    }
}
