//! Cursor pagination. A cursor is opaque to clients: the hex of the last key they saw.

use serde::Serialize;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    /// Return items strictly after this key.
    pub after: Option<String>,
    pub limit: u32,
}

impl PageRequest {
    pub fn new(cursor: Option<&str>, limit: Option<u32>) -> Result<Self, crate::DomainError> {
        let after = match cursor {
            None | Some("") => None,
            Some(c) => Some(decode_cursor(c)?),
        };
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(crate::DomainError::invalid(
                "limit",
                format!("must be 1-{MAX_LIMIT}"),
            ));
        }
        Ok(Self { after, limit })
    }
    pub fn first(limit: u32) -> Self {
        Self { after: None, limit }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched items: the extra one only tells that
    /// there is more.
    pub fn from_overfetch(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = if more {
            items.last().map(|t| encode_cursor(&key(t)))
        } else {
            None
        };
        Self { items, next_cursor }
    }
}

pub fn encode_cursor(key: &str) -> String {
    hex::encode(key.as_bytes())
}

pub fn decode_cursor(c: &str) -> Result<String, crate::DomainError> {
    let bad = || crate::DomainError::invalid("cursor", "is not a cursor this server issued");
    if c.len() > 512 {
        return Err(bad());
    }
    let bytes = hex::decode(c).map_err(|_| bad())?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    if key.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(key)
}
