//! Data residency: each region of the deployment names the provider hosts a tenant pinned to it
//! may send data to. A deployment that configures no regions does not enforce residency (one
//! region, everything in it).

use crate::DomainError;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// A provider host pattern: `api.openai.com` (that host), `*.openai.azure.com` (its
/// subdomains), or `*` (any host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let s = s.trim().to_ascii_lowercase();
        let body = s.strip_prefix("*.").unwrap_or(&s);
        let ok = s == "*"
            || (!body.is_empty()
                && body.len() <= 253
                && body.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }));
        if ok {
            Ok(Self(s))
        } else {
            Err(DomainError::invalid(
                "regions",
                format!("{s:?} is not a host or *.domain pattern"),
            ))
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            _ if self.0 == "*" => true,
            Some(suffix) => {
                host.len() > suffix.len()
                    && host.ends_with(suffix)
                    && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => host == self.0,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Hosts matching any of `patterns` (`HOST,*.domain,...`).
pub fn parse_hosts(spec: &str) -> Result<Vec<HostPattern>, DomainError> {
    spec.split(',')
        .filter(|h| !h.trim().is_empty())
        .map(HostPattern::parse)
        .collect()
}

/// Azure's AI endpoints: the API-key policy applies to them whatever a provider's kind.
pub fn is_azure_host(host: &str) -> bool {
    static AZURE: LazyLock<Vec<HostPattern>> = LazyLock::new(|| {
        [
            "*.openai.azure.com",
            "*.cognitiveservices.azure.com",
            "*.services.ai.azure.com",
        ]
        .iter()
        .filter_map(|p| HostPattern::parse(p).ok())
        .collect()
    });
    AZURE.iter().any(|p| p.matches(host))
}

/// The deployment's regions and the provider hosts each allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regions(BTreeMap<String, Vec<HostPattern>>);

/// Whether a tenant of a region may call a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No regions configured: residency is not enforced.
    NotEnforced,
    Allowed,
    /// The host is not among the region's.
    OutOfRegion,
    /// The tenant's region is not configured (nothing is allowed).
    UnknownRegion,
}

impl Regions {
    /// `eu=*.openai.azure.com,api.mistral.ai;us=api.openai.com` (`AGENTPLANE_REGIONS`).
    pub fn parse(spec: &str) -> Result<Self, DomainError> {
        let mut map = BTreeMap::new();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, hosts) = part.split_once('=').ok_or_else(|| {
                DomainError::invalid("regions", format!("{part:?}: expected region=host,host"))
            })?;
            let name = crate::tenant::validate_region(name.trim())?;
            let hosts = hosts
                .split(',')
                .filter(|h| !h.trim().is_empty())
                .map(HostPattern::parse)
                .collect::<Result<Vec<_>, _>>()?;
            if map.insert(name.clone(), hosts).is_some() {
                return Err(DomainError::invalid(
                    "regions",
                    format!("region {name} is listed twice"),
                ));
            }
        }
        Ok(Self(map))
    }

    pub fn is_enforced(&self) -> bool {
        !self.0.is_empty()
    }

    pub fn knows(&self, region: &str) -> bool {
        !self.is_enforced() || self.0.contains_key(region)
    }

    pub fn verdict(&self, region: &str, host: &str) -> Verdict {
        if !self.is_enforced() {
            return Verdict::NotEnforced;
        }
        match self.0.get(region) {
            None => Verdict::UnknownRegion,
            Some(p) if p.iter().any(|p| p.matches(host)) => Verdict::Allowed,
            Some(_) => Verdict::OutOfRegion,
        }
    }

    /// The host patterns of a region.
    pub fn hosts(&self, region: &str) -> Vec<String> {
        self.0
            .get(region)
            .map(|p| p.iter().map(|p| p.as_str().to_owned()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn azure_hosts_are_known_whatever_the_provider_kind() {
        for host in [
            "eu.openai.azure.com",
            "x.cognitiveservices.azure.com",
            "hub.services.ai.azure.com",
        ] {
            assert!(is_azure_host(host), "{host}");
        }
        for host in [
            "openai.azure.com",
            "api.openai.com",
            "x.azure.com.evil.net",
            "",
        ] {
            assert!(!is_azure_host(host), "{host}");
        }
    }

    #[test]
    fn hosts_match_exactly_or_as_subdomains() {
        let p = HostPattern::parse("*.openai.azure.com").unwrap();
        assert!(p.matches("eu-res.openai.azure.com"));
        assert!(p.matches("EU-RES.openai.azure.com."));
        assert!(!p.matches("openai.azure.com"));
        assert!(!p.matches("evilopenai.azure.com"));
        assert!(!p.matches("x.openai.azure.com.evil.net"));
        let p = HostPattern::parse("api.openai.com").unwrap();
        assert!(p.matches("api.openai.com") && !p.matches("x.api.openai.com"));
        assert!(HostPattern::parse("*").unwrap().matches("anything"));
        for bad in ["", "*.", "a..b", "http://x", "a b", "*x.com"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regions_decide() {
        let r = Regions::parse("eu=*.eu.example.com, llm.eu.test; us = api.openai.com").unwrap();
        assert_eq!(r.verdict("eu", "llm.eu.test"), Verdict::Allowed);
        assert_eq!(r.verdict("eu", "a.eu.example.com"), Verdict::Allowed);
        assert_eq!(r.verdict("eu", "api.openai.com"), Verdict::OutOfRegion);
        assert_eq!(r.verdict("us", "api.openai.com"), Verdict::Allowed);
        assert_eq!(r.verdict("apac", "api.openai.com"), Verdict::UnknownRegion);
        assert!(!r.knows("apac") && r.knows("eu"));
        assert_eq!(Regions::default().verdict("x", "y"), Verdict::NotEnforced);
        assert!(Regions::parse("eu").is_err());
        assert!(Regions::parse("EU=x.com").is_err());
        assert!(Regions::parse("eu=x.com;eu=y.com").is_err());
    }
}
