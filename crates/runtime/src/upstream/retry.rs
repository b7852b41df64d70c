//! Retries of transient failures: exponential backoff with full jitter, honouring `Retry-After`.

use super::{UpstreamConfig, UpstreamError};
use reqwest::header::HeaderMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

/// Runs `attempt` until it succeeds, fails for good, or `cfg.max_retries` retries are spent.
///
/// Retried: timeouts and connection failures before a response, and 408, 429, 500, 502,
/// 503, 504. The wait is the upstream's `Retry-After` when it gave one (an error whose
/// `Retry-After` exceeds `backoff_cap` is answered at once), else a random delay up to
/// `backoff_base * 2^retry`, at most `backoff_cap`.
pub(crate) async fn run<T, F, Fut>(cfg: &UpstreamConfig, mut attempt: F) -> Result<T, UpstreamError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let mut retries = 0;
    loop {
        let err = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if retries >= cfg.max_retries || !retryable(&err) {
            return Err(err);
        }
        let (delay, status) = match &err {
            UpstreamError::Status {
                retry_after: Some(d),
                ..
            } if *d > cfg.backoff_cap => return Err(err),
            UpstreamError::Status {
                retry_after: Some(d),
                status,
                ..
            } => (*d, Some(*status)),
            UpstreamError::Status { status, .. } => (backoff(cfg, retries), Some(*status)),
            _ => (backoff(cfg, retries), None),
        };
        retries += 1;
        tracing::warn!(
            retry = retries,
            ?status,
            ?delay,
            "upstream call failed, retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

fn retryable(err: &UpstreamError) -> bool {
    match err {
        UpstreamError::Timeout | UpstreamError::Connect(_) => true,
        UpstreamError::Status { status, .. } => {
            matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
        }
        UpstreamError::Auth(_) | UpstreamError::Protocol(_) => false,
    }
}

/// Full jitter: uniformly random in `[0, min(cap, base * 2^retry))`.
fn backoff(cfg: &UpstreamConfig, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
    let ceiling = cfg.backoff_base.saturating_mul(factor).min(cfg.backoff_cap);
    ceiling.mul_f64(rand::random::<f64>())
}

/// How long the upstream asks us to wait: Azure's `retry-after-ms`, else `Retry-After` in
/// seconds or as an HTTP date (a date in the past is zero).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let millis = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok());
    if let Some(d) = millis.and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok()) {
        return Some(d);
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn reads_retry_after() {
        let secs = |s| retry_after(&headers(&[("retry-after", s)]));
        assert_eq!(secs("0"), Some(Duration::ZERO));
        assert_eq!(secs(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(secs("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = secs(&later).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(secs("soon"), None);
        assert_eq!(secs("-1"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
        let ms = headers(&[("retry-after-ms", "1500"), ("retry-after", "2")]);
        assert_eq!(retry_after(&ms), Some(Duration::from_millis(1500)));
        let bad_ms = headers(&[("retry-after-ms", "-5"), ("retry-after", "2")]);
        assert_eq!(retry_after(&bad_ms), Some(Duration::from_secs(2)));
    }

    #[test]
    fn backoff_is_capped() {
        let cfg = UpstreamConfig::default();
        for retry in [0, 1, 5, 31, 32, 1000] {
            let ceiling = (cfg.backoff_base * 2u32.saturating_pow(retry)).min(cfg.backoff_cap);
            assert!(backoff(&cfg, retry) <= ceiling, "{retry}");
        }
    }
}
