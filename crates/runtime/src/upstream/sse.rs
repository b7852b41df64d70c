//! Server-sent events: the body of a streaming chat completion, as [`StreamEvent`]s.

use super::client::transport_error;
use super::{EventStream, JsonObject, StreamEvent, UpstreamError};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

/// The largest event (one line, or one event's joined `data`) accepted.
const MAX_EVENT: usize = 1 << 20;

/// The events of `body`, failing with `Timeout` when no chunk arrives for `idle`.
///
/// Ends after `Done` or the first error; a body that ends without `Done` yields a
/// `Protocol` error last.
pub(crate) fn events(
    body: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    idle: Duration,
) -> EventStream {
    let state = State {
        body: Box::pin(body),
        parser: Parser::default(),
        ready: VecDeque::new(),
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, move |mut s| async move {
        let item = s.next_item(idle).await?;
        Some((item, s))
    }))
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;
type Item = Result<StreamEvent, UpstreamError>;

struct State {
    body: Body,
    parser: Parser,
    /// Parsed events (and the error that stopped parsing) not yet handed out.
    ready: VecDeque<Item>,
    /// `Done` or an error was handed out: nothing follows.
    ended: bool,
}

impl State {
    async fn next_item(&mut self, idle: Duration) -> Option<Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                if !matches!(item, Ok(StreamEvent::Chunk(_))) {
                    self.ended = true;
                    self.ready.clear();
                }
                return Some(item);
            }
            if self.ended {
                return None;
            }
            let parsed = match tokio::time::timeout(idle, self.body.next()).await {
                Err(_) => Err(UpstreamError::Timeout),
                Ok(Some(Err(e))) => Err(transport_error(e)),
                Ok(Some(Ok(chunk))) => self.parser.push(&chunk, &mut self.ready),
                Ok(None) => self
                    .parser
                    .finish(&mut self.ready)
                    .and(Err(UpstreamError::Protocol(
                        "the stream ended without data: [DONE]".into(),
                    ))),
            };
            if let Err(e) = parsed {
                self.ready.push_back(Err(e));
            }
        }
    }
}

/// Splits bytes into lines and lines into events, as the HTML standard's event-stream
/// interpretation says: `\n`, `\r\n` or `\r` end a line; a blank line dispatches the event;
/// `:` starts a comment; `data:` lines are joined with `\n`; other fields (`event:`, `id:`,
/// `retry:`) are ignored.
#[derive(Default)]
struct Parser {
    /// The current, unfinished line.
    line: Vec<u8>,
    /// The current event's `data`, each line followed by `\n`.
    data: Vec<u8>,
    /// The last byte seen was `\r`: a `\n` right after it ends no further line.
    after_cr: bool,
}

impl Parser {
    fn push(&mut self, mut chunk: &[u8], out: &mut VecDeque<Item>) -> Result<(), UpstreamError> {
        while let Some((&first, rest)) = chunk.split_first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                chunk = rest;
                continue;
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', chunk) else {
                return self.extend_line(chunk);
            };
            self.extend_line(&chunk[..end])?;
            self.after_cr = chunk[end] == b'\r';
            self.end_line(out)?;
            chunk = &chunk[end + 1..];
        }
        Ok(())
    }

    fn extend_line(&mut self, part: &[u8]) -> Result<(), UpstreamError> {
        if self.line.len() + part.len() > MAX_EVENT {
            return Err(too_large());
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    /// The body ended: a last line or event without its terminator still counts.
    fn finish(&mut self, out: &mut VecDeque<Item>) -> Result<(), UpstreamError> {
        if !self.line.is_empty() {
            self.end_line(out)?;
        }
        self.dispatch(out)
    }

    fn end_line(&mut self, out: &mut VecDeque<Item>) -> Result<(), UpstreamError> {
        let line = &self.line;
        if line.is_empty() {
            return self.dispatch(out);
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (&line[..], &[][..]),
        };
        if field == b"data" {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.data.len() + value.len() >= MAX_EVENT {
                return Err(too_large());
            }
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
        }
        self.line.clear();
        Ok(())
    }

    fn dispatch(&mut self, out: &mut VecDeque<Item>) -> Result<(), UpstreamError> {
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        if data.is_empty() {
            return Ok(());
        }
        let event = if data == b"[DONE]" {
            StreamEvent::Done
        } else {
            StreamEvent::Chunk(JsonObject::read(data, "an event's data")?)
        };
        out.push_back(Ok(event));
        Ok(())
    }
}

fn too_large() -> UpstreamError {
    UpstreamError::Protocol(format!("an event is larger than {} MiB", MAX_EVENT >> 20))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut parser = Parser::default();
        let mut out = VecDeque::new();
        for chunk in chunks {
            parser.push(chunk, &mut out)?;
        }
        parser.finish(&mut out)?;
        out.into_iter().collect()
    }

    const STREAM: &[u8] = b": keep-alive\r\n\r\n\
        data: {\"n\":1}\r\n\r\n\
        event: message\ndata: {\"n\":2}\n\n\
        id: 7\rdata:{\"n\":3}\r\r\
        data: {\"n\":\n\
        data: 4}\n\n\
        data: [DONE]\n\n";

    fn expected() -> Vec<StreamEvent> {
        let mut events: Vec<_> = ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}", "{\"n\":\n4}"]
            .into_iter()
            .map(|data| StreamEvent::Chunk(JsonObject::read(data, "data").unwrap()))
            .collect();
        events.push(StreamEvent::Done);
        events
    }

    #[test]
    fn parses_events_split_anywhere() {
        assert_eq!(parse(&[STREAM]).unwrap(), expected());
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let (a, rest) = STREAM.split_at(i);
                let (b, c) = rest.split_at(j - i);
                assert_eq!(parse(&[a, b, c]).unwrap(), expected(), "split at {i}, {j}");
            }
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse(&bytes).unwrap(), expected());
    }

    #[test]
    fn a_last_event_needs_no_blank_line() {
        assert_eq!(
            parse(&[b"data: {\"n\":1}\n\ndata: [DONE]"]).unwrap(),
            vec![
                StreamEvent::Chunk(JsonObject::read("{\"n\":1}", "data").unwrap()),
                StreamEvent::Done
            ]
        );
        assert_eq!(
            parse(&[b"data: [DONE]\r\n"]).unwrap(),
            vec![StreamEvent::Done]
        );
    }

    #[test]
    fn ignores_comments_fields_and_empty_events() {
        let body = b": hi\nevent: ping\nid: 1\nretry: 10\n\ndata\n\n:\n\n";
        assert_eq!(parse(&[body]).unwrap(), vec![]);
    }

    #[test]
    fn rejects_bad_and_oversized_events() {
        for bad in [
            &b"data: {oops\n\n"[..],
            b"data: [1]\n\n",
            b"data: {} {}\n\n",
        ] {
            let Err(UpstreamError::Protocol(_)) = parse(&[bad]) else {
                panic!("{bad:?} accepted");
            };
        }
        let line = vec![b'a'; MAX_EVENT + 1];
        let Err(UpstreamError::Protocol(m)) = parse(&[&line]) else {
            panic!("oversized line accepted");
        };
        assert!(m.contains("1 MiB"), "{m}");
        let half = format!("data: {}\n", "x".repeat(MAX_EVENT / 2));
        let Err(UpstreamError::Protocol(_)) = parse(&[half.as_bytes(), half.as_bytes()]) else {
            panic!("oversized event accepted");
        };
        let fits = format!("data: {{\"x\":\"{}\"}}\n\n", "x".repeat(MAX_EVENT - 16));
        assert_eq!(parse(&[fits.as_bytes()]).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_stream_ends_after_done_or_reports_a_missing_done() {
        let body = futures::stream::iter([
            Ok(Bytes::from_static(b"data: {\"n\":1}\n\ndata: [DONE]\n\n")),
            Ok(Bytes::from_static(b"data: {\"n\":2}\n\n")),
        ]);
        let got: Vec<_> = events(body, Duration::from_secs(5)).collect().await;
        assert!(matches!(
            got.as_slice(),
            [Ok(StreamEvent::Chunk(_)), Ok(StreamEvent::Done)]
        ));

        let body = futures::stream::iter([Ok(Bytes::from_static(b"data: {\"n\":1}\n\n"))]);
        let got: Vec<_> = events(body, Duration::from_secs(5)).collect().await;
        assert!(matches!(
            got.as_slice(),
            [Ok(StreamEvent::Chunk(_)), Err(UpstreamError::Protocol(_))]
        ));
    }
}
