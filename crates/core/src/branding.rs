//! Tenant branding: validated product name, colours, custom domain, and logo images.

use crate::time::Timestamp;
use crate::DomainError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A tenant's branding, as the console applies it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Branding {
    pub product_name: Option<String>,
    pub primary_color: Option<String>,
    pub accent_color: Option<String>,
    pub custom_domain: Option<String>,
    pub logo: Option<Logo>,
    /// 0 until the tenant first sets its branding.
    pub version: i64,
    pub updated_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Logo {
    pub content_type: String,
    /// Hex SHA-256 of the image: its ETag and its object key.
    pub sha256: String,
    pub size: i64,
}

impl Logo {
    /// The object key of this logo under the tenant's prefix.
    pub fn object_key(&self) -> String {
        format!("branding/logo-{}", self.sha256)
    }
}

/// `#RRGGBB`, normalised to lowercase.
pub fn validate_color(field: &'static str, v: &str) -> Result<String, DomainError> {
    let ok = v.len() == 7 && v.starts_with('#') && v[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(DomainError::invalid(field, "must be a colour #RRGGBB"))
    }
}

pub fn validate_product_name(v: &str) -> Result<String, DomainError> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > 64 || v.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            "product_name",
            "must be 1-64 printable characters",
        ));
    }
    Ok(v.to_owned())
}

/// A DNS host name the tenant serves its console on (`ai.acme.com`), lowercase, with at least
/// two labels. Unique across tenants (the store enforces it).
pub fn validate_domain(v: &str) -> Result<String, DomainError> {
    let d = v.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let labels: Vec<&str> = d.split('.').collect();
    let ok = d.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| label_ok(l))
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()));
    if ok {
        Ok(d)
    } else {
        Err(DomainError::invalid(
            "custom_domain",
            "must be a DNS host name such as ai.example.com",
        ))
    }
}

/// Largest accepted logo.
pub const MAX_LOGO_BYTES: usize = 256 * 1024;

/// The logo's image type, from its bytes (never from what the client claims). PNG, JPEG and
/// WebP only: SVG can carry scripts, and is refused.
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// Checks an uploaded logo: size, and that its bytes are the image type it claims.
pub fn validate_logo(declared: Option<&str>, bytes: &[u8]) -> Result<&'static str, DomainError> {
    if bytes.is_empty() || bytes.len() > MAX_LOGO_BYTES {
        return Err(DomainError::invalid(
            "logo",
            format!("must be 1 byte to {} KiB", MAX_LOGO_BYTES / 1024),
        ));
    }
    let actual = sniff_image(bytes)
        .ok_or_else(|| DomainError::invalid("logo", "must be a PNG, JPEG or WebP image"))?;
    let declared = declared.map(|d| {
        d.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match declared.as_deref() {
        Some(d) if d == actual => Ok(actual),
        _ => Err(DomainError::invalid(
            "logo",
            format!("the body is {actual}; send it with Content-Type: {actual}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colors_names_domains() {
        assert_eq!(validate_color("c", "#A1b2C3"), Ok("#a1b2c3".into()));
        for bad in ["a1b2c3", "#a1b2c", "#a1b2cg", "#a1b2c3d", "red"] {
            assert!(validate_color("c", bad).is_err(), "{bad}");
        }
        assert_eq!(validate_domain("AI.Acme.com."), Ok("ai.acme.com".into()));
        for bad in [
            "localhost",
            "a..b.com",
            "-a.com",
            "a_b.com",
            "acme.123",
            "ex ample.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(validate_domain(bad).is_err(), "{bad}");
        }
        assert!(validate_product_name(" ").is_err());
        assert!(validate_product_name("Acme\u{7}").is_err());
    }

    #[test]
    fn logos_are_sniffed_not_trusted() {
        let png = b"\x89PNG\r\n\x1a\n rest";
        assert_eq!(validate_logo(Some("image/png"), png), Ok("image/png"));
        assert!(
            validate_logo(Some("image/jpeg"), png).is_err(),
            "declared type must match the bytes"
        );
        assert!(validate_logo(Some("image/svg+xml"), b"<svg onload=alert(1)>").is_err());
        assert!(validate_logo(Some("image/png"), b"").is_err());
        let mut big = png.to_vec();
        big.resize(MAX_LOGO_BYTES + 1, 0);
        assert!(validate_logo(Some("image/png"), &big).is_err());
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
    }
}
