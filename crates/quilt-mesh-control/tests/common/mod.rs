//! What this crate's HTTP tests share besides the testkit's servers: reading a watch
//! stream's NDJSON events (skipping keepalive lines, as every Quilt Mesh reader does).
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;

/// Reads NDJSON events from a watch response.
pub struct EventReader {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl EventReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buf: Vec::new(),
        }
    }

    /// The next event, or `None` when the stream ended; panics after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.next())
            .await
            .expect("a watch event in time")
    }

    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(&line).expect("each line is json"));
            }
            match self.response.chunk().await.expect("watch stream reads") {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return None,
            }
        }
    }
}
