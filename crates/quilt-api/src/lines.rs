//! Splitting the watch stream's body (newline-delimited JSON) into lines, whatever the
//! chunking of the transport.

use futures::{Stream, StreamExt};

/// Splits a byte stream into its non-empty lines; a transport error ends the stream
/// after being passed on once.
pub fn lines<S, B, E>(bytes: S) -> impl Stream<Item = Result<Vec<u8>, E>>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
{
    futures::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        |(mut bytes, mut buffer, done)| async move {
            loop {
                if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).take(end).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some((Ok(line), (bytes, buffer, done)));
                }
                if done {
                    return None;
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(chunk.as_ref()),
                    Some(Err(e)) => return Some((Err(e), (bytes, Vec::new(), true))),
                    None => return None,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_across_chunks() {
        let chunks: Vec<Result<&[u8], String>> =
            vec![Ok(b"{\"a\":1}\n{\"b\""), Ok(b":2}\n\n"), Ok(b"{\"c\":3}\n")];
        let got: Vec<_> = lines(futures::stream::iter(chunks))
            .map(|l| String::from_utf8(l.unwrap()).unwrap())
            .collect()
            .await;
        assert_eq!(got, vec!["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
    }

    #[tokio::test]
    async fn a_transport_error_is_passed_on_once_then_the_stream_ends() {
        let chunks: Vec<Result<&[u8], String>> = vec![
            Ok(b"{\"a\":1}\n{\"b\""),
            Err("reset".into()),
            Ok(b"never\n"),
        ];
        let got: Vec<_> = lines(futures::stream::iter(chunks)).collect().await;
        assert_eq!(
            got,
            vec![Ok(b"{\"a\":1}".to_vec()), Err("reset".to_string())]
        );
    }
}
