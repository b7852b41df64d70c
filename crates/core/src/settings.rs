//! Tenant settings: a registry of typed keys, each with its schema and default. A tenant's
//! value for a key is validated against its type before it is stored; every change is a new
//! version with who, when and the previous value (the store keeps the history).

use crate::DomainError;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingType {
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    /// A short identifier-like string (`[A-Za-z0-9_+/.-]`).
    Ident {
        max_len: usize,
    },
    /// A list of short identifier-like strings; `*` means "any".
    IdentList {
        max_items: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SettingCategory {
    General,
    Compliance,
    Security,
    Features,
}

#[derive(Clone, Copy, Debug)]
pub struct SettingSpec {
    pub key: &'static str,
    pub ty: SettingType,
    pub category: SettingCategory,
    /// The default as JSON text.
    pub default: &'static str,
    pub description: &'static str,
}

impl SettingSpec {
    pub fn default_value(&self) -> Value {
        serde_json::from_str(self.default).unwrap_or(Value::Null)
    }

    /// The JSON schema of the value, for the API documentation and agents.
    pub fn schema(&self) -> Value {
        match self.ty {
            SettingType::Bool => json!({"type": "boolean"}),
            SettingType::Int { min, max } => {
                json!({"type": "integer", "minimum": min, "maximum": max})
            }
            SettingType::Ident { max_len } => {
                json!({"type": "string", "minLength": 1, "maxLength": max_len, "pattern": IDENT_PATTERN})
            }
            SettingType::IdentList { max_items } => json!({
                "type": "array", "maxItems": max_items, "uniqueItems": true,
                "items": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": IDENT_PATTERN}
            }),
        }
    }

    /// Checks `value` against the key's type; answers the value as it will be stored.
    pub fn validate(&self, value: &Value) -> Result<Value, DomainError> {
        let bad =
            |why: String| DomainError::invalid("setting_value", format!("{}: {why}", self.key));
        match self.ty {
            SettingType::Bool => value
                .as_bool()
                .map(Value::Bool)
                .ok_or_else(|| bad("must be true or false".into())),
            SettingType::Int { min, max } => match value.as_i64() {
                Some(n) if (min..=max).contains(&n) => Ok(json!(n)),
                _ => Err(bad(format!("must be an integer from {min} to {max}"))),
            },
            SettingType::Ident { max_len } => match value.as_str() {
                Some(s) if is_ident(s, max_len) => Ok(json!(s)),
                _ => Err(bad(format!(
                    "must be 1-{max_len} characters of A-Z, a-z, 0-9, _ + / . -"
                ))),
            },
            SettingType::IdentList { max_items } => {
                let items = value
                    .as_array()
                    .ok_or_else(|| bad("must be a list of strings".into()))?;
                if items.len() > max_items {
                    return Err(bad(format!("at most {max_items} items")));
                }
                let mut out: Vec<&str> = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(s) if is_ident(s, 128) || s == "*" => {
                            if !out.contains(&s) {
                                out.push(s);
                            }
                        }
                        _ => {
                            return Err(bad(
                                "items must be 1-128 characters of A-Z, a-z, 0-9, _ + / . - or *"
                                    .into(),
                            ))
                        }
                    }
                }
                Ok(json!(out))
            }
        }
    }
}

const IDENT_PATTERN: &str = "^[A-Za-z0-9_+/.-]+$";

fn is_ident(s: &str, max_len: usize) -> bool {
    !s.is_empty()
        && s.len() <= max_len
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+/.-".contains(&b))
}

/// Every tenant setting.
pub static SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        key: "locale",
        ty: SettingType::Ident { max_len: 35 },
        category: SettingCategory::General,
        default: r#""en""#,
        description: "BCP 47 language tag of the tenant's interface",
    },
    SettingSpec {
        key: "timezone",
        ty: SettingType::Ident { max_len: 64 },
        category: SettingCategory::General,
        default: r#""UTC""#,
        description: "IANA time zone used in reports",
    },
    SettingSpec {
        key: "audit.retention_days",
        ty: SettingType::Int { min: 30, max: 3650 },
        category: SettingCategory::Compliance,
        default: "365",
        description: "How long audit events are kept",
    },
    SettingSpec {
        key: "data.retention_days",
        ty: SettingType::Int { min: 1, max: 3650 },
        category: SettingCategory::Compliance,
        default: "365",
        description: "How long run records and other tenant data are kept",
    },
    SettingSpec {
        key: "backup.interval_hours",
        ty: SettingType::Int { min: 0, max: 8760 },
        category: SettingCategory::Compliance,
        default: "24",
        description: "How often the tenant is backed up (hours; 0: no scheduled backups)",
    },
    SettingSpec {
        key: "backup.retention_count",
        ty: SettingType::Int { min: 1, max: 365 },
        category: SettingCategory::Compliance,
        default: "7",
        description: "How many backups are kept (the oldest beyond go)",
    },
    SettingSpec {
        key: "providers.allowed",
        ty: SettingType::IdentList { max_items: 100 },
        category: SettingCategory::Compliance,
        default: r#"["*"]"#,
        description: "Provider kinds the tenant's agents may call (`*`: any the region allows)",
    },
    SettingSpec {
        key: "models.allowed",
        ty: SettingType::IdentList { max_items: 500 },
        category: SettingCategory::Compliance,
        default: r#"["*"]"#,
        description: "Models the tenant's agents may call (`*`: any)",
    },
    SettingSpec {
        key: "sso.enforced",
        ty: SettingType::Bool,
        category: SettingCategory::Security,
        default: "false",
        description: "Refuse password sign-in once SSO is configured",
    },
    SettingSpec {
        key: "features.disabled",
        ty: SettingType::IdentList { max_items: 64 },
        category: SettingCategory::Features,
        default: "[]",
        description: "Plan features the tenant admin has hidden from the tenant's users",
    },
];

pub fn spec(key: &str) -> Option<&'static SettingSpec> {
    SETTINGS.iter().find(|s| s.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_for_their_own_type() {
        for s in SETTINGS {
            assert_eq!(
                s.validate(&s.default_value()).ok(),
                Some(s.default_value()),
                "{}",
                s.key
            );
        }
    }

    #[test]
    fn values_are_checked_and_normalised() {
        let days = spec("audit.retention_days").map(|s| s.validate(&json!(29)));
        assert!(matches!(days, Some(Err(_))));
        let ok = spec("audit.retention_days").map(|s| s.validate(&json!(90)));
        assert_eq!(ok, Some(Ok(json!(90))));
        let list = spec("providers.allowed")
            .map(|s| s.validate(&json!(["openai", "openai", "azure_openai"])));
        assert_eq!(
            list,
            Some(Ok(json!(["openai", "azure_openai"]))),
            "duplicates collapse"
        );
        for bad in [json!("x"), json!([1]), json!(["a b"]), json!([""])] {
            assert!(
                spec("models.allowed").is_some_and(|s| s.validate(&bad).is_err()),
                "{bad}"
            );
        }
        assert!(spec("sso.enforced").is_some_and(|s| s.validate(&json!("true")).is_err()));
        assert!(spec("locale").is_some_and(|s| s.validate(&json!("de\u{0}")).is_err()));
        assert!(spec("nope").is_none());
    }
}
