// The per-tenant SSO wiring (identity::sso) is what calls this module; until it does, parts of it
// are only reached from the tests below.

//! SAML 2.0 service provider: SP-initiated AuthnRequests (HTTP-Redirect binding), validation of
//! an IdP's Response (HTTP-POST binding), and the SP's metadata.
//!
//! Decisions that shape it:
//! - XML is read with `roxmltree` (read-only DOM, no DTD, no entities); a DOCTYPE or an entity
//!   declaration is refused before anything is parsed.
//! - Signatures are verified by `xmlsec1`, the XML-DSig reference implementation, run as a
//!   subprocess on the very bytes that are then read here. It is given the IdP's certificate as
//!   the only key and `--enabled-key-data key-name`, so nothing inside `<ds:KeyInfo>` (an embedded
//!   certificate, a `KeyValue`, a `RetrievalMethod`) can ever supply the verification key.
//! - Signature-wrapping defence: the document must hold exactly one `Assertion` (and no
//!   `EncryptedAssertion`) as a direct child of the `Response`; the only signatures allowed are
//!   enveloped ones directly inside that Assertion or that Response, each with a single Reference
//!   to its parent's `ID`; xmlsec1 is pointed at that parent (`--node-id`) and every
//!   value read afterwards comes from that one Assertion.
//! - Replay is the caller's business (in the database): the assertion's ID and until when it must
//!   be remembered are answered.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use roxmltree::{Document, Node, ParsingOptions};
use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

const NS_PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const NS_ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const NS_METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
const NS_XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const CM_BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const NAMEID_EMAIL: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress";
const BINDING_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";

/// Canonicalizations allowed for SignedInfo and as Reference transforms (never XPath/XSLT).
const C14N_ALGS: &[&str] = &[
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments",
    "http://www.w3.org/2006/12/xml-c14n11",
    "http://www.w3.org/2006/12/xml-c14n11#WithComments",
];
/// Public-key signatures only (no HMAC, whose "key" would be public), no SHA-1.
const SIGNATURE_ALGS: &[&str] = &[
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
];
const DIGEST_ALGS: &[&str] = &[
    "http://www.w3.org/2001/04/xmlenc#sha256",
    "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "http://www.w3.org/2001/04/xmlenc#sha512",
];

/// The program that verifies signatures (from PATH).
const XMLSEC1: &str = "xmlsec1";
const XMLSEC1_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds on what an unauthenticated POST can make us parse.
const MAX_RESPONSE_B64: usize = 512 * 1024;
const MAX_XML_NODES: u32 = 50_000;
/// The HTTP-Redirect binding's bound on RelayState (SAML bindings §3.4.3).
const MAX_RELAY_STATE: usize = 80;

#[derive(Clone, Debug)]
pub(crate) struct SamlSettings {
    /// Expected Issuer of the Response and the Assertion.
    pub idp_entity_id: String,
    /// Where AuthnRequests go (HTTP-Redirect binding).
    pub idp_sso_url: String,
    /// The IdP's signing certificate (PEM, or the bare base64 of metadata); the ONLY key trusted.
    pub idp_cert_pem: String,
    /// Our entity ID: the Audience we require.
    pub sp_entity_id: String,
    /// Our AssertionConsumerService URL (expected Recipient and Destination).
    pub acs_url: String,
    /// Attribute carrying the e-mail; `None`: the NameID (emailAddress format) is the e-mail.
    pub email_attr: Option<String>,
    pub name_attr: Option<String>,
    pub groups_attr: Option<String>,
    /// Leeway on every time check, e.g. 120.
    pub clock_skew_secs: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SamlIdentity {
    pub name_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// The Assertion's ID: remember it (until `not_on_or_after`) to refuse a replay.
    pub assertion_id: String,
    /// Unix seconds: after this the assertion is refused anyway (its validity plus the skew).
    pub not_on_or_after: i64,
    /// The Response's InResponseTo, if any (signed only when the Response is; a match against
    /// `expected_request_id` is also checked on the signed SubjectConfirmationData).
    pub in_response_to: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SamlError {
    #[error("invalid SAML response: {0}")]
    Invalid(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("SAML verification unavailable: {0}")]
    Unavailable(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

fn invalid(msg: impl Into<String>) -> SamlError {
    SamlError::Invalid(msg.into())
}

fn sig_err(msg: impl Into<String>) -> SamlError {
    SamlError::Signature(msg.into())
}

// ---------------------------------------------------------------------------------------------
// SP-initiated AuthnRequest (HTTP-Redirect binding)
// ---------------------------------------------------------------------------------------------

/// SP-initiated: an AuthnRequest (ID = "_" + random hex, IssueInstant now, Destination
/// idp_sso_url, AssertionConsumerServiceURL acs_url, ProtocolBinding HTTP-POST, Issuer
/// sp_entity_id), deflated + base64 + url-encoded into
/// `idp_sso_url?SAMLRequest=...&RelayState=<relay_state>`. Answers (url, request_id).
pub(crate) fn authn_request_url(
    s: &SamlSettings,
    relay_state: &str,
) -> Result<(String, String), SamlError> {
    check_url("idp_sso_url", &s.idp_sso_url)?;
    check_url("acs_url", &s.acs_url)?;
    non_empty("sp_entity_id", &s.sp_entity_id)?;
    if s.idp_sso_url.contains('#') {
        return Err(SamlError::Config("idp_sso_url has a fragment".into()));
    }
    if relay_state.len() > MAX_RELAY_STATE {
        return Err(invalid(format!(
            "RelayState longer than {MAX_RELAY_STATE} bytes"
        )));
    }
    let request_id = format!("_{}", hex::encode(rand::random::<[u8; 20]>()));
    let issue_instant = format_instant(time::OffsetDateTime::now_utc().unix_timestamp())?;
    let name_id_policy = if s.email_attr.is_none() {
        format!(r#"<samlp:NameIDPolicy Format="{NAMEID_EMAIL}" AllowCreate="true"/>"#)
    } else {
        r#"<samlp:NameIDPolicy AllowCreate="true"/>"#.to_owned()
    };
    let xml = format!(
        concat!(
            r#"<samlp:AuthnRequest xmlns:samlp="{p}" xmlns:saml="{a}" ID="{id}" Version="2.0" "#,
            r#"IssueInstant="{ii}" Destination="{dest}" AssertionConsumerServiceURL="{acs}" "#,
            r#"ProtocolBinding="{binding}"><saml:Issuer>{issuer}</saml:Issuer>{policy}"#,
            r#"</samlp:AuthnRequest>"#
        ),
        p = NS_PROTOCOL,
        a = NS_ASSERTION,
        id = request_id,
        ii = issue_instant,
        dest = xml_escape(&s.idp_sso_url),
        acs = xml_escape(&s.acs_url),
        binding = BINDING_POST,
        issuer = xml_escape(&s.sp_entity_id),
        policy = name_id_policy,
    );
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(xml.as_bytes())
        .map_err(|e| invalid(format!("deflate: {e}")))?;
    let deflated = enc.finish().map_err(|e| invalid(format!("deflate: {e}")))?;
    let mut url = s.idp_sso_url.clone();
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str("SAMLRequest=");
    url.push_str(&percent_encode(&STANDARD.encode(deflated)));
    if !relay_state.is_empty() {
        url.push_str("&RelayState=");
        url.push_str(&percent_encode(relay_state));
    }
    Ok((url, request_id))
}

/// SP metadata XML (EntityDescriptor with SPSSODescriptor, AssertionConsumerService HTTP-POST at
/// acs_url).
pub(crate) fn sp_metadata(s: &SamlSettings) -> String {
    let name_id_format = if s.email_attr.is_none() {
        format!("<md:NameIDFormat>{NAMEID_EMAIL}</md:NameIDFormat>")
    } else {
        String::new()
    };
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            "\n",
            r#"<md:EntityDescriptor xmlns:md="{md}" entityID="{entity}">"#,
            r#"<md:SPSSODescriptor AuthnRequestsSigned="false" WantAssertionsSigned="true" "#,
            r#"protocolSupportEnumeration="{p}">{nif}"#,
            r#"<md:AssertionConsumerService Binding="{binding}" Location="{acs}" index="0" "#,
            r#"isDefault="true"/></md:SPSSODescriptor></md:EntityDescriptor>"#,
            "\n"
        ),
        md = NS_METADATA,
        entity = xml_escape(&s.sp_entity_id),
        p = NS_PROTOCOL,
        nif = name_id_format,
        binding = BINDING_POST,
        acs = xml_escape(&s.acs_url),
    )
}

// ---------------------------------------------------------------------------------------------
// Response validation (HTTP-POST binding)
// ---------------------------------------------------------------------------------------------

/// Validates a base64 `SAMLResponse` (HTTP-POST binding) at time `now` (unix secs) and answers
/// the identity. See the module documentation for what is checked.
pub(crate) async fn validate_response(
    s: &SamlSettings,
    saml_response_b64: &str,
    expected_request_id: Option<&str>,
    now: i64,
) -> Result<SamlIdentity, SamlError> {
    validate_with(XMLSEC1, s, saml_response_b64, expected_request_id, now).await
}

async fn validate_with(
    xmlsec1: &str,
    s: &SamlSettings,
    saml_response_b64: &str,
    expected_request_id: Option<&str>,
    now: i64,
) -> Result<SamlIdentity, SamlError> {
    let cert_pem = normalize_cert(&s.idp_cert_pem)?;
    non_empty("idp_entity_id", &s.idp_entity_id)?;
    non_empty("sp_entity_id", &s.sp_entity_id)?;
    non_empty("acs_url", &s.acs_url)?;
    if !(0..=3600).contains(&s.clock_skew_secs) {
        return Err(SamlError::Config("clock_skew_secs must be 0..=3600".into()));
    }

    if saml_response_b64.len() > MAX_RESPONSE_B64 {
        return Err(invalid("SAMLResponse too large"));
    }
    let compact: String = saml_response_b64
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| invalid("SAMLResponse is not base64"))?;
    let xml = std::str::from_utf8(&bytes).map_err(|_| invalid("SAMLResponse is not UTF-8"))?;
    check_prolog(xml)?;

    let doc = Document::parse_with_options(
        xml,
        ParsingOptions {
            allow_dtd: false,
            nodes_limit: MAX_XML_NODES,
            entity_resolver: None,
        },
    )
    .map_err(|e| invalid(format!("XML: {e}")))?;

    // Structure: one Response holding exactly one (plain) Assertion, nothing else to confuse.
    let response = doc.root_element();
    if !is(response, NS_PROTOCOL, "Response") {
        return Err(invalid("root element is not samlp:Response"));
    }
    if doc
        .descendants()
        .any(|n| is(n, NS_ASSERTION, "EncryptedAssertion"))
    {
        return Err(invalid("encrypted assertions are not supported"));
    }
    let assertions: Vec<Node> = doc
        .descendants()
        .filter(|n| is(*n, NS_ASSERTION, "Assertion"))
        .collect();
    let [assertion] = assertions[..] else {
        return Err(invalid(format!(
            "expected exactly one Assertion, found {}",
            assertions.len()
        )));
    };
    if assertion.parent_element() != Some(response) {
        return Err(invalid("the Assertion is not a child of the Response"));
    }
    let response_id = id_of(response)?;
    let assertion_id = id_of(assertion)?;
    if response_id == assertion_id {
        return Err(invalid("the Response and the Assertion share an ID"));
    }
    for id in [response_id, assertion_id] {
        let holders = doc
            .descendants()
            .filter(|n| n.is_element())
            .flat_map(|n| n.attributes())
            .filter(|a| a.value() == id && a.name().eq_ignore_ascii_case("id"))
            .count();
        if holders != 1 {
            return Err(invalid(format!("ID {id} is not unique")));
        }
    }

    // Response-level checks (cheap, before spawning anything).
    if response.attribute("Version") != Some("2.0") {
        return Err(invalid("Response Version is not 2.0"));
    }
    let status_code = child(response, NS_PROTOCOL, "Status")?
        .and_then(|st| first_child(st, NS_PROTOCOL, "StatusCode"))
        .and_then(|c| c.attribute("Value"));
    if status_code != Some(STATUS_SUCCESS) {
        return Err(invalid(format!(
            "status is not success: {}",
            status_code.unwrap_or("(none)")
        )));
    }
    if let Some(dest) = response.attribute("Destination") {
        if dest != s.acs_url {
            return Err(invalid(format!("Destination {dest:?} is not our ACS URL")));
        }
    }
    let in_response_to = response.attribute("InResponseTo").map(str::to_owned);
    if let Some(expected) = expected_request_id {
        if in_response_to.as_deref() != Some(expected) {
            return Err(invalid("InResponseTo does not match the request"));
        }
    }
    if let Some(issuer) = child(response, NS_ASSERTION, "Issuer")? {
        if text_of(issuer)? != s.idp_entity_id {
            return Err(invalid("Response Issuer is not the IdP"));
        }
    }

    // Signatures: only enveloped ones on the Response or on the Assertion, each referencing its
    // parent; at least one. Both are verified when both are present.
    let mut signed = Vec::new();
    for sig in doc.descendants().filter(|n| is(*n, NS_DSIG, "Signature")) {
        let parent = sig.parent_element();
        let owner = if parent == Some(assertion) {
            assertion
        } else if parent == Some(response) {
            response
        } else {
            return Err(sig_err(
                "a Signature outside the Response and the Assertion",
            ));
        };
        if signed.contains(&owner) {
            return Err(sig_err("more than one Signature on one element"));
        }
        check_signature_shape(sig, owner)?;
        signed.push(owner);
    }
    if signed.is_empty() {
        return Err(sig_err("neither the Response nor the Assertion is signed"));
    }
    let signed_ids: Vec<&str> = signed.iter().map(|n| id_of(*n)).collect::<Result<_, _>>()?;
    verify_with_xmlsec1(xmlsec1, &bytes, &cert_pem, &signed_ids).await?;

    // Everything below is read from the one Assertion that the verified signature covers.
    read_assertion(s, assertion, expected_request_id, now, in_response_to)
}

/// The verified assertion's contents, checked against the settings and the time.
fn read_assertion(
    s: &SamlSettings,
    assertion: Node,
    expected_request_id: Option<&str>,
    now: i64,
    in_response_to: Option<String>,
) -> Result<SamlIdentity, SamlError> {
    let skew = s.clock_skew_secs;
    if assertion.attribute("Version") != Some("2.0") {
        return Err(invalid("Assertion Version is not 2.0"));
    }
    let assertion_id = id_of(assertion)?.to_owned();
    let issuer = child(assertion, NS_ASSERTION, "Issuer")?
        .ok_or_else(|| invalid("the Assertion has no Issuer"))?;
    if text_of(issuer)? != s.idp_entity_id {
        return Err(invalid("Assertion Issuer is not the IdP"));
    }
    if let Some(ii) = assertion.attribute("IssueInstant") {
        if parse_instant(ii)? > now + skew {
            return Err(invalid("Assertion IssueInstant is in the future"));
        }
    }

    // Conditions: time window, audience, nothing we don't understand.
    let conditions = child(assertion, NS_ASSERTION, "Conditions")?
        .ok_or_else(|| invalid("the Assertion has no Conditions"))?;
    if let Some(nb) = conditions.attribute("NotBefore") {
        if parse_instant(nb)? > now + skew {
            return Err(invalid("the Assertion is not yet valid (NotBefore)"));
        }
    }
    let mut valid_until = None;
    if let Some(noa) = conditions.attribute("NotOnOrAfter") {
        let noa = parse_instant(noa)?;
        if now - skew >= noa {
            return Err(invalid("the Assertion has expired (NotOnOrAfter)"));
        }
        valid_until = Some(noa);
    }
    let mut audience_restrictions = 0;
    for cond in conditions.children().filter(|n| n.is_element()) {
        if is(cond, NS_ASSERTION, "AudienceRestriction") {
            audience_restrictions += 1;
            let mut ours = false;
            for aud in cond.children().filter(|n| is(*n, NS_ASSERTION, "Audience")) {
                ours |= text_of(aud)? == s.sp_entity_id;
            }
            if !ours {
                return Err(invalid("the Audience is not this service provider"));
            }
        } else if !is(cond, NS_ASSERTION, "OneTimeUse")
            && !is(cond, NS_ASSERTION, "ProxyRestriction")
        {
            return Err(invalid(format!(
                "unsupported condition {}",
                cond.tag_name().name()
            )));
        }
    }
    if audience_restrictions == 0 {
        return Err(invalid("the Assertion has no AudienceRestriction"));
    }

    // Subject: a NameID and a bearer confirmation for us, now.
    let subject = child(assertion, NS_ASSERTION, "Subject")?
        .ok_or_else(|| invalid("the Assertion has no Subject"))?;
    let name_id_el = child(subject, NS_ASSERTION, "NameID")?
        .ok_or_else(|| invalid("the Subject has no NameID"))?;
    let name_id = text_of(name_id_el)?;
    if name_id.is_empty() {
        return Err(invalid("the NameID is empty"));
    }
    let mut confirmed_until = None;
    let mut why_not = String::from("no bearer SubjectConfirmation");
    for sc in subject
        .children()
        .filter(|n| is(*n, NS_ASSERTION, "SubjectConfirmation"))
    {
        if sc.attribute("Method") != Some(CM_BEARER) {
            continue;
        }
        match check_bearer(s, sc, expected_request_id, now) {
            Ok(until) => {
                confirmed_until = Some(until);
                break;
            }
            Err(e) => why_not = e,
        }
    }
    let Some(confirmed_until) = confirmed_until else {
        return Err(invalid(why_not));
    };

    // Web SSO profile: an AuthnStatement, whose session has not ended.
    let mut authn_statements = 0;
    for st in assertion
        .children()
        .filter(|n| is(*n, NS_ASSERTION, "AuthnStatement"))
    {
        authn_statements += 1;
        if let Some(sn) = st.attribute("SessionNotOnOrAfter") {
            if now - skew >= parse_instant(sn)? {
                return Err(invalid("the IdP session has ended (SessionNotOnOrAfter)"));
            }
        }
    }
    if authn_statements == 0 {
        return Err(invalid("the Assertion has no AuthnStatement"));
    }

    let attr = |name: &Option<String>| -> Result<Vec<String>, SamlError> {
        match name {
            Some(name) => attribute_values(assertion, name),
            None => Ok(Vec::new()),
        }
    };
    let email = match &s.email_attr {
        Some(_) => attr(&s.email_attr)?.into_iter().next(),
        None => (name_id_el.attribute("Format") == Some(NAMEID_EMAIL)).then(|| name_id.clone()),
    };
    let name = attr(&s.name_attr)?.into_iter().next();
    let groups = attr(&s.groups_attr)?;

    let until = valid_until.map_or(confirmed_until, |v: i64| v.min(confirmed_until));
    Ok(SamlIdentity {
        name_id,
        email,
        name,
        groups,
        assertion_id,
        not_on_or_after: until.saturating_add(skew),
        in_response_to,
    })
}

/// One bearer SubjectConfirmation: answers its NotOnOrAfter, or why it does not confirm.
fn check_bearer(
    s: &SamlSettings,
    sc: Node,
    expected_request_id: Option<&str>,
    now: i64,
) -> Result<i64, String> {
    let skew = s.clock_skew_secs;
    let data = sc
        .children()
        .find(|n| is(*n, NS_ASSERTION, "SubjectConfirmationData"))
        .ok_or("the bearer SubjectConfirmation has no SubjectConfirmationData")?;
    if data.attribute("Recipient") != Some(s.acs_url.as_str()) {
        return Err("SubjectConfirmationData Recipient is not our ACS URL".into());
    }
    let instant = |name: &str| -> Result<Option<i64>, String> {
        data.attribute(name)
            .map(|v| parse_instant(v).map_err(|e| e.to_string()))
            .transpose()
    };
    let until = instant("NotOnOrAfter")?.ok_or("SubjectConfirmationData has no NotOnOrAfter")?;
    if now - skew >= until {
        return Err("the bearer confirmation has expired (NotOnOrAfter)".into());
    }
    if let Some(nb) = instant("NotBefore")? {
        if nb > now + skew {
            return Err("the bearer confirmation is not yet valid (NotBefore)".into());
        }
    }
    if let Some(expected) = expected_request_id {
        if data.attribute("InResponseTo") != Some(expected) {
            return Err("SubjectConfirmationData InResponseTo does not match the request".into());
        }
    }
    Ok(until)
}

/// The non-empty values of the attribute named `name`, in order.
fn attribute_values(assertion: Node, name: &str) -> Result<Vec<String>, SamlError> {
    let mut out = Vec::new();
    for st in assertion
        .children()
        .filter(|n| is(*n, NS_ASSERTION, "AttributeStatement"))
    {
        for a in st
            .children()
            .filter(|n| is(*n, NS_ASSERTION, "Attribute") && n.attribute("Name") == Some(name))
        {
            for v in a
                .children()
                .filter(|n| is(*n, NS_ASSERTION, "AttributeValue"))
            {
                if matches!(v.attribute((NS_XSI, "nil")), Some("true" | "1")) {
                    continue;
                }
                let v = text_of(v)?;
                if !v.is_empty() {
                    out.push(v);
                }
            }
        }
    }
    Ok(out)
}

/// The signature on `owner` must be the enveloped kind xmlsec1 will find from `--node-id`:
/// one Reference to `#owner-ID`, enveloped + canonicalization transforms only, strong algorithms.
fn check_signature_shape(sig: Node, owner: Node) -> Result<(), SamlError> {
    let owner_id = id_of(owner)?;
    // xmlsec1 verifies the first ds:Signature below the --node-id element: it must be this one.
    if owner.descendants().find(|n| is(*n, NS_DSIG, "Signature")) != Some(sig) {
        return Err(sig_err("the Signature is not the first one of its element"));
    }
    let mut signed_infos = sig.children().filter(|n| is(*n, NS_DSIG, "SignedInfo"));
    let (Some(si), None) = (signed_infos.next(), signed_infos.next()) else {
        return Err(sig_err("the Signature needs exactly one SignedInfo"));
    };
    let c14n =
        first_child(si, NS_DSIG, "CanonicalizationMethod").and_then(|n| n.attribute("Algorithm"));
    if !c14n.is_some_and(|a| C14N_ALGS.contains(&a)) {
        return Err(sig_err("unsupported CanonicalizationMethod"));
    }
    let method = first_child(si, NS_DSIG, "SignatureMethod").and_then(|n| n.attribute("Algorithm"));
    if !method.is_some_and(|a| SIGNATURE_ALGS.contains(&a)) {
        return Err(sig_err(format!(
            "unsupported SignatureMethod {}",
            method.unwrap_or("(none)")
        )));
    }
    let refs: Vec<Node> = si
        .children()
        .filter(|n| is(*n, NS_DSIG, "Reference"))
        .collect();
    let [reference] = refs[..] else {
        return Err(sig_err("the Signature needs exactly one Reference"));
    };
    if reference.attribute("URI") != Some(format!("#{owner_id}").as_str()) {
        return Err(sig_err(
            "the Reference does not point at the signed element",
        ));
    }
    let digest =
        first_child(reference, NS_DSIG, "DigestMethod").and_then(|n| n.attribute("Algorithm"));
    if !digest.is_some_and(|a| DIGEST_ALGS.contains(&a)) {
        return Err(sig_err(format!(
            "unsupported DigestMethod {}",
            digest.unwrap_or("(none)")
        )));
    }
    let transforms: Vec<&str> = first_child(reference, NS_DSIG, "Transforms")
        .into_iter()
        .flat_map(|t| t.children().filter(|n| is(*n, NS_DSIG, "Transform")))
        .map(|t| t.attribute("Algorithm").unwrap_or(""))
        .collect();
    if !transforms.contains(&ENVELOPED) {
        return Err(sig_err("the Signature is not enveloped"));
    }
    if let Some(bad) = transforms
        .iter()
        .find(|t| **t != ENVELOPED && !C14N_ALGS.contains(t))
    {
        return Err(sig_err(format!("unsupported Transform {bad}")));
    }
    if sig.descendants().any(|n| is(n, NS_DSIG, "Manifest")) {
        return Err(sig_err("Manifests are not supported"));
    }
    Ok(())
}

/// Runs `xmlsec1 --verify` on the exact bytes received, once per signed element, with the IdP's
/// certificate as the only key. `--enabled-key-data key-name`: nothing in KeyInfo (X509Data,
/// KeyValue, RetrievalMethod, EncryptedKey) can supply a key; only the keys manager (holding
/// just the configured certificate's key) can.
async fn verify_with_xmlsec1(
    program: &str,
    xml: &[u8],
    cert_pem: &str,
    signed_ids: &[&str],
) -> Result<(), SamlError> {
    let dir = tempfile::Builder::new()
        .prefix("agentplane-saml-")
        .tempdir()
        .map_err(|e| SamlError::Unavailable(format!("temp dir: {e}")))?;
    let cert_path = dir.path().join("idp-cert.pem");
    let xml_path = dir.path().join("response.xml");
    tokio::fs::write(&cert_path, cert_pem)
        .await
        .map_err(|e| SamlError::Unavailable(format!("temp file: {e}")))?;
    tokio::fs::write(&xml_path, xml)
        .await
        .map_err(|e| SamlError::Unavailable(format!("temp file: {e}")))?;

    for id in signed_ids {
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("--verify")
            .arg("--pubkey-cert-pem")
            .arg(&cert_path)
            .args(["--enabled-key-data", "key-name"])
            .args(["--enabled-reference-uris", "same-doc"])
            .arg("--ignore-manifests")
            .args([
                "--id-attr:ID",
                "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
            ])
            .args([
                "--id-attr:ID",
                "urn:oasis:names:tc:SAML:2.0:protocol:Response",
            ])
            .args(["--node-id", id])
            .arg(&xml_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SamlError::Unavailable(
                    "xmlsec1 not installed: apt-get install xmlsec1".into(),
                ))
            }
            Err(e) => return Err(SamlError::Unavailable(format!("xmlsec1: {e}"))),
        };
        let out = match tokio::time::timeout(XMLSEC1_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(SamlError::Unavailable(format!("xmlsec1: {e}"))),
            // The child is killed when its future is dropped (kill_on_drop).
            Err(_) => return Err(SamlError::Unavailable("xmlsec1 timed out".into())),
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let detail = stderr
                .lines()
                .rev()
                .find_map(|l| l.split_once("error=").map(|(_, d)| d.trim().to_owned()))
                .unwrap_or_else(|| stderr.lines().last().unwrap_or("").trim().to_owned());
            let detail: String = detail.chars().take(200).collect();
            return Err(sig_err(format!(
                "the signature on {id} does not verify with the IdP certificate ({detail})"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn is(n: Node, ns: &str, name: &str) -> bool {
    n.is_element() && n.tag_name().name() == name && n.tag_name().namespace() == Some(ns)
}

fn first_child<'a, 'i>(n: Node<'a, 'i>, ns: &str, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| is(*c, ns, name))
}

/// The single child element `ns:name`, if any; two of them is an error.
fn child<'a, 'i>(n: Node<'a, 'i>, ns: &str, name: &str) -> Result<Option<Node<'a, 'i>>, SamlError> {
    let mut it = n.children().filter(|c| is(*c, ns, name));
    let first = it.next();
    if it.next().is_some() {
        return Err(invalid(format!(
            "more than one {name} in {}",
            n.tag_name().name()
        )));
    }
    Ok(first)
}

fn id_of<'a>(n: Node<'a, '_>) -> Result<&'a str, SamlError> {
    let id = n
        .attribute("ID")
        .ok_or_else(|| invalid(format!("{} has no ID", n.tag_name().name())))?;
    let mut chars = id.chars();
    let ncname = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ncname {
        return Err(invalid(format!(
            "{} has an unusable ID",
            n.tag_name().name()
        )));
    }
    Ok(id)
}

/// An element's text: all its text (comments dropped, as canonicalization without comments
/// does, so `a@b.c<!---->.evil` reads as the signed `a@b.c.evil`), trimmed. Child elements are
/// refused.
fn text_of(n: Node) -> Result<String, SamlError> {
    let mut s = String::new();
    for c in n.children() {
        if c.is_element() {
            return Err(invalid(format!(
                "{} has element content",
                n.tag_name().name()
            )));
        }
        if let Some(t) = c.is_text().then(|| c.text()).flatten() {
            s.push_str(t);
        }
    }
    Ok(s.trim().to_owned())
}

/// No DOCTYPE / entity declarations (XXE, entity expansion) and, if declared, UTF-8 only (so
/// xmlsec1's libxml2 and roxmltree read the same characters).
fn check_prolog(xml: &str) -> Result<(), SamlError> {
    let upper = xml.to_ascii_uppercase();
    if upper.contains("<!DOCTYPE") || upper.contains("<!ENTITY") {
        return Err(invalid("DOCTYPE and entity declarations are not allowed"));
    }
    let body = xml.trim_start_matches('\u{feff}');
    if let Some(decl) = body.strip_prefix("<?xml") {
        let decl = decl.split("?>").next().unwrap_or("").to_ascii_lowercase();
        if let Some((_, rest)) = decl.split_once("encoding") {
            let value = rest
                .trim_start()
                .trim_start_matches('=')
                .trim_start()
                .trim_start_matches(['"', '\''])
                .split(['"', '\''])
                .next()
                .unwrap_or("");
            if value != "utf-8" && value != "utf8" {
                return Err(invalid(format!("unsupported XML encoding {value:?}")));
            }
        }
    }
    Ok(())
}

/// xs:dateTime (SAML requires UTC) → unix seconds.
fn parse_instant(v: &str) -> Result<i64, SamlError> {
    time::OffsetDateTime::parse(v.trim(), &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| invalid(format!("bad timestamp {v:?}")))
}

fn format_instant(unix: i64) -> Result<String, SamlError> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| invalid(format!("time: {e}")))?;
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&f).map_err(|e| invalid(format!("time: {e}")))
}

/// The configured certificate as one clean PEM block (accepts PEM or metadata's bare base64).
fn normalize_cert(pem: &str) -> Result<String, SamlError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let body = match pem.find(BEGIN) {
        Some(start) => {
            let rest = &pem[start + BEGIN.len()..];
            let end = rest
                .find(END)
                .ok_or_else(|| SamlError::Config("idp_cert_pem: no END CERTIFICATE".into()))?;
            if rest[end + END.len()..].contains(BEGIN) {
                return Err(SamlError::Config(
                    "idp_cert_pem must hold exactly one certificate".into(),
                ));
            }
            &rest[..end]
        }
        None => pem,
    };
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| SamlError::Config("idp_cert_pem is not a PEM certificate".into()))?;
    if der.len() < 64 || der[0] != 0x30 {
        return Err(SamlError::Config(
            "idp_cert_pem is not a DER certificate".into(),
        ));
    }
    let b64 = STANDARD.encode(&der);
    let mut out = String::from(BEGIN);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    Ok(out)
}

fn check_url(what: &str, url: &str) -> Result<(), SamlError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(SamlError::Config(format!("{what} must be an http(s) URL")))
    }
}

fn non_empty(what: &str, v: &str) -> Result<(), SamlError> {
    if v.trim().is_empty() {
        Err(SamlError::Config(format!("{what} is empty")))
    } else {
        Ok(())
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! Real signatures: an IdP key pair is generated with the `openssl` CLI at test time and the
    //! Responses are signed by the `xmlsec1` CLI (scripts/install-peers installs both).
    use super::*;
    use std::io::Read as _;
    use std::sync::OnceLock;

    const NOW: i64 = 1_700_000_000;
    const IDP: &str = "https://idp.example.test/metadata";
    const SP: &str = "https://agentplane.example.test/saml/acme";
    const ACS: &str = "https://agentplane.example.test/v1/sso/saml/acme/acs";

    struct Keys {
        a_key: String,
        a_cert: String,
        b_key: String,
        b_cert: String,
    }

    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let gen = |name: &str| {
                let key = dir.path().join(format!("{name}.key"));
                let cert = dir.path().join(format!("{name}.crt"));
                let st = std::process::Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    ])
                    .arg("-subj")
                    .arg(format!("/CN=idp-{name}"))
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("openssl CLI (scripts/install-peers)");
                assert!(st.success(), "openssl req failed");
                (
                    std::fs::read_to_string(key).unwrap(),
                    std::fs::read_to_string(cert).unwrap(),
                )
            };
            let (a_key, a_cert) = gen("a");
            let (b_key, b_cert) = gen("b");
            Keys {
                a_key,
                a_cert,
                b_key,
                b_cert,
            }
        })
    }

    fn settings() -> SamlSettings {
        SamlSettings {
            idp_entity_id: IDP.into(),
            idp_sso_url: "https://idp.example.test/sso?tenant=acme".into(),
            idp_cert_pem: keys().a_cert.clone(),
            sp_entity_id: SP.into(),
            acs_url: ACS.into(),
            email_attr: Some("email".into()),
            name_attr: Some("displayName".into()),
            groups_attr: Some("groups".into()),
            clock_skew_secs: 120,
        }
    }

    fn ts(unix: i64) -> String {
        format_instant(unix).unwrap()
    }

    /// An IdP Response, as a template whose ds:Signature elements xmlsec1 fills in.
    #[derive(Clone)]
    struct R {
        response_id: String,
        assertion_id: String,
        destination: Option<String>,
        in_response_to: Option<String>,
        scd_in_response_to: Option<String>,
        issuer: String,
        audience: String,
        recipient: String,
        not_before: i64,
        not_on_or_after: i64,
        scd_not_on_or_after: i64,
        status: String,
        name_id: String,
        name_id_format: String,
        email: String,
        groups: Vec<String>,
        sign_assertion: bool,
        sign_response: bool,
        key_value: bool,
    }

    impl Default for R {
        fn default() -> Self {
            Self {
                response_id: "_resp1".into(),
                assertion_id: "_assert1".into(),
                destination: Some(ACS.into()),
                in_response_to: Some("_req1".into()),
                scd_in_response_to: Some("_req1".into()),
                issuer: IDP.into(),
                audience: SP.into(),
                recipient: ACS.into(),
                not_before: NOW - 60,
                not_on_or_after: NOW + 300,
                scd_not_on_or_after: NOW + 240,
                status: STATUS_SUCCESS.into(),
                name_id: "alice@example.test".into(),
                name_id_format: NAMEID_EMAIL.into(),
                email: "alice@example.test".into(),
                groups: vec!["Engineering".into(), "Admins & Co".into()],
                sign_assertion: true,
                sign_response: false,
                key_value: false,
            }
        }
    }

    fn sig_template(id: &str, key_value: bool) -> String {
        format!(
            concat!(
                r#"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo>"#,
                r#"<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>"#,
                r#"<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>"#,
                r##"<ds:Reference URI="#{id}"><ds:Transforms>"##,
                r#"<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>"#,
                r#"<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms>"#,
                r#"<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>"#,
                r#"<ds:DigestValue/></ds:Reference></ds:SignedInfo><ds:SignatureValue/>"#,
                r#"<ds:KeyInfo><ds:X509Data><ds:X509Certificate/></ds:X509Data>{kv}</ds:KeyInfo>"#,
                r#"</ds:Signature>"#
            ),
            id = id,
            kv = if key_value { "<ds:KeyValue/>" } else { "" },
        )
    }

    impl R {
        fn assertion_xml(&self) -> String {
            let groups: String = self
                .groups
                .iter()
                .map(|g| {
                    format!(
                        "<saml:AttributeValue>{}</saml:AttributeValue>",
                        xml_escape(g)
                    )
                })
                .collect();
            let scd_irt = self
                .scd_in_response_to
                .as_ref()
                .map(|v| format!(r#" InResponseTo="{v}""#))
                .unwrap_or_default();
            format!(
                concat!(
                    r#"<saml:Assertion xmlns:saml="{a}" ID="{aid}" Version="2.0" IssueInstant="{ii}">"#,
                    "<saml:Issuer>{issuer}</saml:Issuer>{sig}",
                    r#"<saml:Subject><saml:NameID Format="{nif}">{name_id}</saml:NameID>"#,
                    r#"<saml:SubjectConfirmation Method="{bearer}"><saml:SubjectConfirmationData"#,
                    r#"{scd_irt} NotOnOrAfter="{scd_noa}" Recipient="{recipient}"/>"#,
                    "</saml:SubjectConfirmation></saml:Subject>",
                    r#"<saml:Conditions NotBefore="{nb}" NotOnOrAfter="{noa}"><saml:AudienceRestriction>"#,
                    "<saml:Audience>{audience}</saml:Audience></saml:AudienceRestriction></saml:Conditions>",
                    r#"<saml:AuthnStatement AuthnInstant="{ii}" SessionIndex="_s1"><saml:AuthnContext>"#,
                    "<saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:Password",
                    "</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>",
                    "<saml:AttributeStatement>",
                    r#"<saml:Attribute Name="email"><saml:AttributeValue>{email}</saml:AttributeValue></saml:Attribute>"#,
                    r#"<saml:Attribute Name="displayName"><saml:AttributeValue>Alice Example</saml:AttributeValue></saml:Attribute>"#,
                    r#"<saml:Attribute Name="groups">{groups}</saml:Attribute>"#,
                    "</saml:AttributeStatement></saml:Assertion>"
                ),
                a = NS_ASSERTION,
                aid = self.assertion_id,
                ii = ts(NOW - 5),
                issuer = xml_escape(&self.issuer),
                sig = if self.sign_assertion {
                    sig_template(&self.assertion_id, self.key_value)
                } else {
                    String::new()
                },
                nif = self.name_id_format,
                name_id = xml_escape(&self.name_id),
                bearer = CM_BEARER,
                scd_irt = scd_irt,
                scd_noa = ts(self.scd_not_on_or_after),
                recipient = xml_escape(&self.recipient),
                nb = ts(self.not_before),
                noa = ts(self.not_on_or_after),
                audience = xml_escape(&self.audience),
                email = xml_escape(&self.email),
                groups = groups,
            )
        }

        fn template(&self) -> String {
            let dest = self
                .destination
                .as_ref()
                .map(|d| format!(r#" Destination="{}""#, xml_escape(d)))
                .unwrap_or_default();
            let irt = self
                .in_response_to
                .as_ref()
                .map(|v| format!(r#" InResponseTo="{v}""#))
                .unwrap_or_default();
            format!(
                concat!(
                    r#"<samlp:Response xmlns:samlp="{p}" xmlns:saml="{a}" ID="{rid}" Version="2.0" "#,
                    r#"IssueInstant="{ii}"{dest}{irt}><saml:Issuer>{issuer}</saml:Issuer>{sig}"#,
                    r#"<samlp:Status><samlp:StatusCode Value="{status}"/></samlp:Status>{assertion}"#,
                    "</samlp:Response>"
                ),
                p = NS_PROTOCOL,
                a = NS_ASSERTION,
                rid = self.response_id,
                ii = ts(NOW - 5),
                dest = dest,
                irt = irt,
                issuer = xml_escape(&self.issuer),
                sig = if self.sign_response {
                    sig_template(&self.response_id, self.key_value)
                } else {
                    String::new()
                },
                status = self.status,
                assertion = self.assertion_xml(),
            )
        }

        /// Signed by IdP key A (the trusted one).
        fn signed(&self) -> String {
            let k = keys();
            self.signed_by(&k.a_key, &k.a_cert)
        }

        fn signed_by(&self, key: &str, cert: &str) -> String {
            let mut xml = self.template();
            if self.sign_assertion {
                xml = xmlsec_sign(&xml, &self.assertion_id, key, cert);
            }
            if self.sign_response {
                xml = xmlsec_sign(&xml, &self.response_id, key, cert);
            }
            xml
        }
    }

    /// `xmlsec1 --sign` of the first ds:Signature template below the element with `id`.
    fn xmlsec_sign(xml: &str, id: &str, key: &str, cert: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("key.pem"), key).unwrap();
        std::fs::write(p("cert.pem"), cert).unwrap();
        std::fs::write(p("in.xml"), xml).unwrap();
        let out = std::process::Command::new("xmlsec1")
            .arg("--sign")
            .arg("--privkey-pem")
            .arg(format!(
                "{},{}",
                p("key.pem").display(),
                p("cert.pem").display()
            ))
            .args([
                "--id-attr:ID",
                "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
            ])
            .args([
                "--id-attr:ID",
                "urn:oasis:names:tc:SAML:2.0:protocol:Response",
            ])
            .args(["--node-id", id])
            .arg("--output")
            .arg(p("out.xml"))
            .arg(p("in.xml"))
            .output()
            .expect("xmlsec1 CLI (scripts/install-peers)");
        assert!(
            out.status.success(),
            "xmlsec1 --sign: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(p("out.xml")).unwrap()
    }

    async fn check(xml: &str, expected: Option<&str>) -> Result<SamlIdentity, SamlError> {
        validate_response(&settings(), &STANDARD.encode(xml), expected, NOW).await
    }

    fn assert_invalid(r: Result<SamlIdentity, SamlError>, needle: &str) {
        match r {
            Err(SamlError::Invalid(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("expected Invalid({needle}), got {other:?}"),
        }
    }

    fn assert_signature_err(r: Result<SamlIdentity, SamlError>) {
        assert!(
            matches!(r, Err(SamlError::Signature(_))),
            "expected a Signature error, got {r:?}"
        );
    }

    #[tokio::test]
    async fn valid_signed_assertion_gives_the_identity() {
        let xml = R::default().signed();
        assert!(xml.contains("<ds:X509Certificate>MII"), "cert embedded");
        let id = check(&xml, Some("_req1")).await.unwrap();
        assert_eq!(
            id,
            SamlIdentity {
                name_id: "alice@example.test".into(),
                email: Some("alice@example.test".into()),
                name: Some("Alice Example".into()),
                groups: vec!["Engineering".into(), "Admins & Co".into()],
                assertion_id: "_assert1".into(),
                // min(Conditions NotOnOrAfter, SubjectConfirmationData NotOnOrAfter) + skew.
                not_on_or_after: NOW + 240 + 120,
                in_response_to: Some("_req1".into()),
            }
        );
        // IdP-initiated (no request of ours to match) is accepted too.
        assert!(check(&xml, None).await.is_ok());
        // Line-wrapped base64, as some IdPs post it.
        let wrapped: String = STANDARD
            .encode(&xml)
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
            .collect();
        assert!(validate_response(&settings(), &wrapped, None, NOW)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn email_from_name_id_when_no_email_attribute() {
        let xml = R::default().signed();
        let mut s = settings();
        s.email_attr = None;
        s.idp_cert_pem = s
            .idp_cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect(); // metadata's bare base64 form
        let id = validate_response(&s, &STANDARD.encode(&xml), None, NOW)
            .await
            .unwrap();
        assert_eq!(id.email.as_deref(), Some("alice@example.test"));
        let xml = R {
            name_id: "opaque-123".into(),
            name_id_format: "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent".into(),
            ..R::default()
        }
        .signed();
        let id = validate_response(&s, &STANDARD.encode(&xml), None, NOW)
            .await
            .unwrap();
        assert_eq!((id.name_id.as_str(), id.email), ("opaque-123", None));
    }

    #[tokio::test]
    async fn valid_signed_response_and_doubly_signed() {
        let r = R {
            sign_assertion: false,
            sign_response: true,
            ..R::default()
        };
        let id = check(&r.signed(), Some("_req1")).await.unwrap();
        assert_eq!(id.email.as_deref(), Some("alice@example.test"));
        let both = R {
            sign_response: true,
            ..R::default()
        };
        assert!(check(&both.signed(), Some("_req1")).await.is_ok());
    }

    #[tokio::test]
    async fn unsigned_is_refused() {
        let r = R {
            sign_assertion: false,
            ..R::default()
        };
        assert_signature_err(check(&r.template(), None).await);
    }

    #[tokio::test]
    async fn another_key_is_refused_even_with_its_cert_or_key_value_embedded() {
        let k = keys();
        let xml = R::default().signed_by(&k.b_key, &k.b_cert);
        assert!(xml.contains("<ds:X509Certificate>MII"));
        assert_signature_err(check(&xml, None).await);
        let r = R {
            key_value: true,
            sign_response: true,
            ..R::default()
        };
        let xml = r.signed_by(&k.b_key, &k.b_cert);
        assert!(xml.contains("RSAKeyValue"), "KeyValue embedded");
        assert_signature_err(check(&xml, None).await);
        // The same KeyInfo content with the trusted key is fine (KeyInfo is simply not used).
        assert!(check(&r.signed(), None).await.is_ok());
    }

    #[tokio::test]
    async fn signature_wrapping_is_refused() {
        let good = R::default();
        let signed = good.signed();
        let evil = R {
            assertion_id: "_evil".into(),
            name_id: "mallory@evil.test".into(),
            email: "mallory@evil.test".into(),
            groups: vec!["Admins".into()],
            sign_assertion: false,
            ..R::default()
        }
        .assertion_xml();
        let start = signed.find("<saml:Assertion").unwrap();
        let end = signed.find("</saml:Assertion>").unwrap() + "</saml:Assertion>".len();
        let original = &signed[start..end];
        let subject = signed.find("<saml:Subject>").unwrap();
        let cases = [
            // before / after / inside the signed assertion
            format!("{}{evil}{}", &signed[..start], &signed[start..]),
            format!("{}{evil}{}", &signed[..end], &signed[end..]),
            format!("{}{evil}{}", &signed[..subject], &signed[subject..]),
            // the signed original hidden in Extensions, the evil one in its place
            format!(
                "{}<samlp:Extensions>{original}</samlp:Extensions>{evil}{}",
                &signed[..start],
                &signed[end..]
            ),
            // the original response wrapped inside an evil one
            format!(
                r#"<samlp:Response xmlns:samlp="{NS_PROTOCOL}" ID="_outer" Version="2.0"><samlp:Status><samlp:StatusCode Value="{STATUS_SUCCESS}"/></samlp:Status>{}</samlp:Response>"#,
                signed.trim_start_matches("<?xml version=\"1.0\"?>").trim()
            ),
        ];
        for (i, xml) in cases.iter().enumerate() {
            let r = check(xml, None).await;
            assert!(
                matches!(r, Err(SamlError::Invalid(_) | SamlError::Signature(_))),
                "case {i}: {r:?}"
            );
        }
        // One assertion only, but the evil one carrying the original's signature...
        let sig_start = signed.find("<ds:Signature").unwrap();
        let sig_end = signed.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
        let sig = &signed[sig_start..sig_end];
        let evil_signed = evil.replacen(
            &format!("<saml:Issuer>{IDP}</saml:Issuer>"),
            &format!("<saml:Issuer>{IDP}</saml:Issuer>{sig}"),
            1,
        );
        let swapped = format!("{}{evil_signed}{}", &signed[..start], &signed[end..]);
        assert_signature_err(check(&swapped, None).await);
        // ...or even the original's ID: the digest no longer matches.
        let same_id = swapped.replace(r#"ID="_evil""#, r#"ID="_assert1""#);
        assert_signature_err(check(&same_id, None).await);
    }

    #[tokio::test]
    async fn conditions_are_enforced() {
        let wrong_audience = R {
            audience: "https://someone-else.test".into(),
            ..R::default()
        };
        assert_invalid(check(&wrong_audience.signed(), None).await, "Audience");
        let expired = R {
            not_on_or_after: NOW - 121,
            ..R::default()
        };
        assert_invalid(check(&expired.signed(), None).await, "expired");
        // Within the clock skew it still passes.
        let barely = R {
            not_on_or_after: NOW - 100,
            ..R::default()
        };
        assert!(check(&barely.signed(), None).await.is_ok());
        let scd_expired = R {
            scd_not_on_or_after: NOW - 500,
            ..R::default()
        };
        assert_invalid(check(&scd_expired.signed(), None).await, "expired");
        let future = R {
            not_before: NOW + 600,
            ..R::default()
        };
        assert_invalid(check(&future.signed(), None).await, "not yet valid");
    }

    #[tokio::test]
    async fn recipient_destination_issuer_and_in_response_to_are_enforced() {
        let recipient = R {
            recipient: "https://evil.test/acs".into(),
            ..R::default()
        };
        assert_invalid(check(&recipient.signed(), None).await, "Recipient");
        let destination = R {
            destination: Some("https://evil.test/acs".into()),
            ..R::default()
        };
        assert_invalid(check(&destination.signed(), None).await, "Destination");
        let issuer = R {
            issuer: "https://evil.test/idp".into(),
            ..R::default()
        };
        assert_invalid(check(&issuer.signed(), None).await, "Issuer");
        let xml = R::default().signed();
        assert_invalid(check(&xml, Some("_req2")).await, "InResponseTo");
        let scd = R {
            scd_in_response_to: Some("_other".into()),
            ..R::default()
        };
        assert_invalid(check(&scd.signed(), Some("_req1")).await, "InResponseTo");
    }

    #[tokio::test]
    async fn doctype_and_entities_are_refused() {
        let xml = R::default().signed();
        let body = xml.trim_start_matches("<?xml version=\"1.0\"?>");
        let evil = format!(
            "<?xml version=\"1.0\"?>\n<!DOCTYPE r [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>{body}"
        );
        assert_invalid(check(&evil, None).await, "DOCTYPE");
        let latin1 = format!("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>{body}");
        assert_invalid(check(&latin1, None).await, "encoding");
    }

    #[tokio::test]
    async fn status_not_success_is_refused() {
        let r = R {
            status: "urn:oasis:names:tc:SAML:2.0:status:Requester".into(),
            ..R::default()
        };
        assert_invalid(check(&r.signed(), None).await, "status");
    }

    #[tokio::test]
    async fn tampering_after_signing_breaks_the_signature() {
        let xml = R::default().signed();
        let tampered = xml.replace(
            "<saml:AttributeValue>Engineering</saml:AttributeValue>",
            "<saml:AttributeValue>SuperAdmins</saml:AttributeValue>",
        );
        assert_ne!(xml, tampered);
        assert_signature_err(check(&tampered, None).await);
        let r = R {
            sign_assertion: false,
            sign_response: true,
            ..R::default()
        };
        let tampered = r
            .signed()
            .replace("alice@example.test", "mallory@evil.test");
        assert_signature_err(check(&tampered, None).await);
    }

    #[tokio::test]
    async fn a_comment_cannot_truncate_the_name_id() {
        let r = R {
            name_id: "alice@example.test.evil.test".into(),
            ..R::default()
        };
        let xml = r.signed().replace(
            ">alice@example.test.evil.test<",
            ">alice@example.test<!---->.evil.test<",
        );
        let id = check(&xml, None).await.unwrap();
        assert_eq!(id.name_id, "alice@example.test.evil.test");
    }

    #[tokio::test]
    async fn missing_xmlsec1_is_unavailable() {
        let xml = R::default().signed();
        let r = validate_with(
            "xmlsec1-not-here",
            &settings(),
            &STANDARD.encode(&xml),
            None,
            NOW,
        )
        .await;
        match r {
            Err(SamlError::Unavailable(m)) => assert!(m.contains("apt-get install xmlsec1")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_configuration_is_reported() {
        let mut s = settings();
        s.idp_cert_pem = "not a cert".into();
        let xml = R::default().signed();
        let r = validate_response(&s, &STANDARD.encode(&xml), None, NOW).await;
        assert!(matches!(r, Err(SamlError::Config(_))), "{r:?}");
    }

    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(if b[i] == b'+' { b' ' } else { b[i] });
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn authn_request_url_round_trips() {
        let s = settings();
        let (url, request_id) = authn_request_url(&s, "state/é &x").unwrap();
        assert!(request_id.starts_with('_') && request_id.len() == 41);
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "https://idp.example.test/sso");
        let params: Vec<(&str, String)> = query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k, percent_decode(v))
            })
            .collect();
        assert_eq!(params[0], ("tenant", "acme".into()));
        assert_eq!(params[2], ("RelayState", "state/é &x".into()));
        assert_eq!(params[1].0, "SAMLRequest");
        let deflated = STANDARD.decode(&params[1].1).unwrap();
        let mut xml = String::new();
        flate2::read::DeflateDecoder::new(&deflated[..])
            .read_to_string(&mut xml)
            .unwrap();
        let doc = Document::parse(&xml).unwrap();
        let req = doc.root_element();
        assert!(is(req, NS_PROTOCOL, "AuthnRequest"));
        assert_eq!(req.attribute("ID"), Some(request_id.as_str()));
        assert_eq!(req.attribute("Version"), Some("2.0"));
        assert_eq!(req.attribute("Destination"), Some(s.idp_sso_url.as_str()));
        assert_eq!(req.attribute("AssertionConsumerServiceURL"), Some(ACS));
        assert_eq!(req.attribute("ProtocolBinding"), Some(BINDING_POST));
        let ii = parse_instant(req.attribute("IssueInstant").unwrap()).unwrap();
        assert!((ii - time::OffsetDateTime::now_utc().unix_timestamp()).abs() < 60);
        let issuer = first_child(req, NS_ASSERTION, "Issuer").unwrap();
        assert_eq!(text_of(issuer).unwrap(), SP);
        // Fresh IDs; no RelayState parameter when there is none; the 80-byte bound.
        let (url2, id2) = authn_request_url(&s, "").unwrap();
        assert_ne!(id2, request_id);
        assert!(!url2.contains("RelayState"));
        assert!(authn_request_url(&s, &"x".repeat(81)).is_err());
    }

    #[test]
    fn metadata_names_our_entity_and_acs() {
        let xml = sp_metadata(&settings());
        let doc = Document::parse(&xml).unwrap();
        let ed = doc.root_element();
        assert!(is(ed, NS_METADATA, "EntityDescriptor"));
        assert_eq!(ed.attribute("entityID"), Some(SP));
        let acs = doc
            .descendants()
            .find(|n| is(*n, NS_METADATA, "AssertionConsumerService"))
            .unwrap();
        assert_eq!(acs.attribute("Binding"), Some(BINDING_POST));
        assert_eq!(acs.attribute("Location"), Some(ACS));
    }
}
