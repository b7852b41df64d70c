//! Timestamps are milliseconds since the Unix epoch in storage (portable and sortable on
//! every backend) and RFC 3339 on the wire.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }
    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }
    pub fn millis(self) -> i64 {
        self.0
    }
    pub fn from_datetime(dt: OffsetDateTime) -> Self {
        Self((dt.unix_timestamp_nanos() / 1_000_000) as i64)
    }
    pub fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
    pub fn plus_secs(self, secs: u64) -> Self {
        self.plus_millis(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
    }
    pub fn plus_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        OffsetDateTime::parse(s, &Rfc3339)
            .ok()
            .map(Self::from_datetime)
    }
    /// Parses `YYYY-MM-DD` as midnight UTC, or a full RFC 3339 timestamp.
    pub fn parse_date_or_rfc3339(s: &str) -> Option<Self> {
        if let Some(ts) = Self::parse_rfc3339(s) {
            return Some(ts);
        }
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(s, &fmt)
            .ok()
            .map(|d| Self::from_datetime(d.midnight().assume_utc()))
    }
    /// The calendar month (UTC) this instant falls in, as `YYYY-MM`: the quota period.
    pub fn period(self) -> String {
        let dt = self.to_datetime();
        format!("{:04}-{:02}", dt.year(), u8::from(dt.month()))
    }
    /// The first instant of the next calendar month (UTC): when monthly quotas start again.
    pub fn next_period_start(self) -> Self {
        let dt = self.to_datetime();
        let (y, m) = match dt.month() {
            time::Month::December => (dt.year() + 1, time::Month::January),
            m => (dt.year(), m.next()),
        };
        time::Date::from_calendar_date(y, m, 1)
            .map(|d| Self::from_datetime(d.midnight().assume_utc()))
            .unwrap_or(self)
    }
}

/// RFC 3339 in UTC with exactly three fraction digits, so the strings sort like the instants.
const WIRE_FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_datetime().format(WIRE_FORMAT) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom("expected an RFC 3339 timestamp"))
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .into()
    }
}
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_period() {
        let ts = Timestamp::parse_rfc3339("2026-11-23T10:00:00Z").map(Timestamp::millis);
        assert_eq!(ts, Some(1_795_428_000_000));
        assert_eq!(
            Timestamp::from_millis(1_795_428_000_000).period(),
            "2026-11"
        );
        assert_eq!(
            Timestamp::parse_date_or_rfc3339("2026-01-31").map(|t| t.to_string()),
            Some("2026-01-31T00:00:00.000Z".to_owned())
        );
        assert!(Timestamp::parse_date_or_rfc3339("yesterday").is_none());
    }
}
