//! W3C trace context (`traceparent`): continue a caller's trace, or start one.

/// One span of a W3C trace: the trace it belongs to, the span's id and the sampled flag.
///
/// Built from an incoming `traceparent` header (or fresh), passed down the call, and sent
/// upstream as `traceparent` so the provider's logs can be joined with ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    sampled: bool,
}

impl TraceContext {
    /// Continues the trace of a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), or
    /// starts a fresh, sampled trace when the header is absent or invalid.
    ///
    /// Follows the W3C rules: lower-case hex only, all-zero ids and version `ff` are
    /// invalid; a later version is read by its first four fields (what follows them must
    /// start with `-`).
    pub fn from_header(header: Option<&str>) -> TraceContext {
        header
            .and_then(|h| Self::parse(h.trim_matches([' ', '\t'])))
            .unwrap_or_else(|| TraceContext {
                trace_id: random_id(),
                parent_id: random_id(),
                sampled: true,
            })
    }

    fn parse(h: &str) -> Option<TraceContext> {
        let version = hex_field::<1>(h.get(0..2)?)?[0];
        let fits = match version {
            0xff => false,
            0x00 => h.len() == 55,
            _ => h.len() == 55 || h.as_bytes().get(55) == Some(&b'-'),
        };
        let dashes = [2, 35, 52]
            .iter()
            .all(|&i| h.as_bytes().get(i) == Some(&b'-'));
        if !fits || !dashes {
            return None;
        }
        let trace_id = hex_field::<16>(h.get(3..35)?)?;
        let parent_id = hex_field::<8>(h.get(36..52)?)?;
        let flags = hex_field::<1>(h.get(53..55)?)?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new span in the same trace (same trace id and flag, a new random span id).
    pub fn child(&self) -> TraceContext {
        TraceContext {
            parent_id: random_id(),
            ..*self
        }
    }

    /// The `traceparent` header value naming this span: `00-{trace}-{span}-{01|00}`.
    pub fn header_value(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!(
            "00-{}-{}-{flags}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id)
        )
    }

    /// The trace id as 32 lower-case hex digits (for log fields).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

/// Decodes exactly `N` bytes of lower-case hex (the W3C format forbids upper case).
fn hex_field<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A random id that is not all zeros (all-zero ids are invalid).
fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    loop {
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut id);
        if id != [0; N] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_valid_header() {
        let t = TraceContext::from_header(Some(VALID));
        assert_eq!(t.header_value(), VALID);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            TraceContext::from_header(Some(unsampled)).header_value(),
            unsampled
        );
    }

    #[test]
    fn reads_the_first_fields_of_a_future_version() {
        let h = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-comes-next";
        let t = TraceContext::from_header(Some(h));
        assert_eq!(t.header_value(), VALID);
        let no_dash = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_ne!(
            TraceContext::from_header(Some(no_dash)).trace_id_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn invalid_headers_start_a_fresh_trace() {
        let invalid = [
            "",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1",
        ];
        for h in invalid {
            let t = TraceContext::from_header(Some(h));
            assert_ne!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736", "{h}");
            assert!(TraceContext::parse(&t.header_value()).is_some(), "{h}");
        }
        let fresh = TraceContext::from_header(None);
        assert_ne!(fresh, TraceContext::from_header(None));
        assert!(fresh.header_value().ends_with("-01"));
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_span() {
        let parent = TraceContext::from_header(Some(VALID));
        let child = parent.child();
        assert_eq!(child.trace_id_hex(), parent.trace_id_hex());
        assert_ne!(child.header_value(), parent.header_value());
        assert!(child.header_value().ends_with("-01"));
    }
}
