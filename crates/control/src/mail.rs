//! Outbound email over SMTP (`lettre`, rustls only).
//!
//! One [`Mailer`] is built from an SMTP URL and a sender at start-up (validation only, no
//! network I/O) and shared; every [`Mailer::send`] opens its own connection, so a relay that
//! was down a minute ago is simply tried again on the next message.
//!
//! Header injection: the recipient and sender are parsed as exactly one mailbox and refused
//! if they contain any control character; the subject is handed to lettre, which writes
//! every word holding CR, LF or any non-ASCII character as an RFC 2047 encoded word, so no
//! subject can start a header line of its own (a unit test below pins that).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Upper bound for one whole SMTP exchange (connect, TLS, AUTH, envelope, DATA, QUIT).
/// lettre's own timeout is per network operation, so both are set.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid SMTP configuration: {0}")]
    Config(String),
    #[error("invalid address {0:?}")]
    Address(String),
    /// Transient or permanent server/network error.
    #[error("SMTP delivery failed: {0}")]
    Delivery(String),
}

#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `scheme://host[:port]` with user info and query stripped: what `Debug` shows.
    endpoint: String,
    has_credentials: bool,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.has_credentials.then_some("<redacted>"))
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// `url`: lettre's SMTP URL syntax: `smtp://host:port` (plain, for local relays and tests),
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS), `smtps://host:465` (implicit TLS).
    /// `from`: "Name <addr@example.com>" or "addr@example.com". Validates both; no network I/O here.
    pub fn from_url(url: &str, from: &str) -> Result<Self, MailError> {
        let (endpoint, has_credentials) = redacted_endpoint(url)?;
        // lettre's errors name the problem, never the URL, so they cannot leak the password.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| MailError::Config(e.to_string()))?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        let from = parse_mailbox(from)?;
        Ok(Self {
            transport,
            from,
            endpoint,
            has_credentials,
        })
    }

    /// The sender every message carries (`From:` and the envelope's `MAIL FROM`).
    pub fn from_mailbox(&self) -> &Mailbox {
        &self.from
    }

    /// Sends one plain-text UTF-8 message. `to` is validated (one address, no CR/LF tricks).
    /// A timeout of 30 s applies to the whole SMTP exchange.
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), MailError> {
        let message = self.build(to, subject, body)?;
        match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(message)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(e)) => Err(MailError::Delivery(e.to_string())),
            Err(_elapsed) => Err(MailError::Delivery(format!(
                "timed out after {} s",
                SEND_TIMEOUT.as_secs()
            ))),
        }
    }

    fn build(&self, to: &str, subject: &str, body: &str) -> Result<Message, MailError> {
        let to = parse_mailbox(to)?;
        // Message-ID on the sender's domain rather than this machine's host name.
        let message_id = format!(
            "<{}@{}>",
            uuid::Uuid::new_v4().simple(),
            self.from.email.domain()
        );
        Message::builder()
            .message_id(Some(message_id))
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| MailError::Config(format!("cannot build message: {e}")))
    }
}

/// Exactly one mailbox, bare (`a@example.com`) or named (`A <a@example.com>`); any control
/// character (CR, LF, NUL, TAB, ...) is refused before parsing.
fn parse_mailbox(s: &str) -> Result<Mailbox, MailError> {
    if s.chars().any(char::is_control) || s.trim().is_empty() {
        return Err(MailError::Address(s.to_owned()));
    }
    Mailbox::from_str(s.trim()).map_err(|_| MailError::Address(s.to_owned()))
}

/// `scheme://host[:port]` without user info, path or query, and whether the URL carries
/// credentials. Refuses a user name without a password, which lettre would silently ignore.
fn redacted_endpoint(url: &str) -> Result<(String, bool), MailError> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| MailError::Config("expected smtp://… or smtps://…".to_owned()))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    if let Some(userinfo) = userinfo {
        if !userinfo.contains(':') {
            return Err(MailError::Config(
                "SMTP user name given without a password".to_owned(),
            ));
        }
    }
    Ok((format!("{scheme}://{host_port}"), userinfo.is_some()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn mailer() -> Mailer {
        Mailer::from_url("smtp://127.0.0.1:2525", "Agentplane <noreply@example.com>").unwrap()
    }

    fn formatted(m: &Message) -> String {
        String::from_utf8(m.formatted()).unwrap()
    }

    fn header_lines(raw: &str) -> Vec<&str> {
        raw.split("\r\n\r\n")
            .next()
            .unwrap()
            .split("\r\n")
            .filter(|l| !l.starts_with([' ', '\t']))
            .collect()
    }

    #[test]
    fn accepts_the_documented_url_forms() {
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://localhost",
            "smtp://user:p%40ss@mail.example.com:587?tls=required",
            "smtp://mail.example.com?tls=opportunistic",
            "smtps://mail.example.com:465",
            "smtps://user:pass@mail.example.com",
        ] {
            Mailer::from_url(url, "noreply@example.com").unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn url_parse_errors_are_config_errors() {
        for url in [
            "",
            "mail.example.com:25",
            "http://mail.example.com",
            "smtp://",
            "smtp://mail.example.com:99999",
            "smtp://mail.example.com?tls=bogus",
            "smtp://user@mail.example.com:587",
        ] {
            let err = Mailer::from_url(url, "noreply@example.com").unwrap_err();
            assert!(matches!(err, MailError::Config(_)), "{url}: {err:?}");
        }
    }

    #[test]
    fn errors_and_debug_never_show_the_password() {
        let err = Mailer::from_url(
            "smtp://user:hunter2@mail.example.com:notaport",
            "a@b.example",
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");

        let m = Mailer::from_url(
            "smtp://user:hunter2@mail.example.com:587?tls=required",
            "a@b.example",
        )
        .unwrap();
        let debug = format!("{m:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("user"), "{debug}");
        assert!(debug.contains("smtp://mail.example.com:587"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn bad_from_addresses_are_refused() {
        for from in [
            "",
            "   ",
            "not an address",
            "@example.com",
            "a@",
            "a@b.example, c@d.example",
            "Name <a@b.example",
            "a@b.example\r\nBcc: evil@example.com",
            "Name\n<a@b.example>",
        ] {
            let err = Mailer::from_url("smtp://127.0.0.1:25", from).unwrap_err();
            assert!(matches!(err, MailError::Address(_)), "{from:?}: {err:?}");
        }
        let m =
            Mailer::from_url("smtp://127.0.0.1:25", "Acme Support <support@acme.example>").unwrap();
        assert_eq!(m.from_mailbox().email.to_string(), "support@acme.example");
    }

    #[test]
    fn bad_to_addresses_are_refused() {
        let m = mailer();
        for to in [
            "",
            "nobody",
            "a@b.example, c@d.example",
            "a@b.example; c@d.example",
            "<a@b.example",
            "a@b.example\0",
            "a@b.example\tc@d.example",
        ] {
            let err = m.build(to, "s", "b").unwrap_err();
            assert!(matches!(err, MailError::Address(_)), "{to:?}: {err:?}");
        }
        assert!(m.build("Jane Doe <jane@example.com>", "s", "b").is_ok());
        assert!(m.build("jane@example.com", "s", "b").is_ok());
    }

    #[tokio::test]
    async fn send_refuses_a_bad_recipient_before_any_network_io() {
        // Nothing listens on port 1 — an Address error proves no connection was tried first.
        let m = Mailer::from_url("smtp://127.0.0.1:1", "noreply@example.com").unwrap();
        let err = m
            .send("x@example.com\nBcc: y@example.com", "s", "b")
            .await
            .unwrap_err();
        assert!(matches!(err, MailError::Address(_)), "{err:?}");
    }

    #[tokio::test]
    async fn unreachable_server_is_a_delivery_error() {
        let m = Mailer::from_url("smtp://127.0.0.1:1", "noreply@example.com").unwrap();
        let err = m.send("x@example.com", "s", "b").await.unwrap_err();
        assert!(matches!(err, MailError::Delivery(_)), "{err:?}");
    }

    #[test]
    fn header_injection_in_recipient_is_refused() {
        let m = mailer();
        for to in [
            "victim@example.com\r\nBcc: evil@example.com",
            "victim@example.com\nBcc: evil@example.com",
            "victim@example.com\rBcc: evil@example.com",
            "Victim <victim@example.com>\r\nBcc: evil@example.com",
            "Victim\r\nBcc: evil@example.com <victim@example.com>",
        ] {
            let err = m.build(to, "hello", "body").unwrap_err();
            assert!(matches!(err, MailError::Address(_)), "{to:?}: {err:?}");
        }
    }

    #[test]
    fn header_injection_in_subject_is_encoded_not_obeyed() {
        let m = mailer();
        for subject in [
            "hi\r\nBcc: evil@example.com",
            "hi\nBcc: evil@example.com",
            "hi\rBcc: evil@example.com",
            "hi\r\n\r\ninjected body",
            "hi \r\n Bcc: evil@example.com",
        ] {
            let raw = formatted(&m.build("victim@example.com", subject, "real body").unwrap());
            let headers = header_lines(&raw);
            assert!(
                !headers
                    .iter()
                    .any(|l| l.to_ascii_lowercase().starts_with("bcc")),
                "{subject:?} produced {raw:?}"
            );
            assert_eq!(
                headers.iter().filter(|l| l.starts_with("Subject:")).count(),
                1,
                "{raw:?}"
            );
            // The header block ends only where lettre ends it: the body is ours.
            assert!(
                raw.split_once("\r\n\r\n")
                    .unwrap()
                    .1
                    .starts_with("real body"),
                "{raw:?}"
            );
            // No bare CR or LF anywhere: every line break is a CRLF.
            assert!(!raw.replace("\r\n", "").contains(['\r', '\n']), "{raw:?}");
        }
    }

    #[test]
    fn message_is_plain_text_utf8_with_sender_and_recipient() {
        let m = mailer();
        let raw = formatted(
            &m.build("jane@example.com", "Einladung für Acme", "Grüße\n")
                .unwrap(),
        );
        let headers = header_lines(&raw);
        assert!(
            headers.contains(&"From: Agentplane <noreply@example.com>"),
            "{raw}"
        );
        assert!(headers.contains(&"To: jane@example.com"), "{raw}");
        assert!(
            headers.contains(&"Content-Type: text/plain; charset=utf-8"),
            "{raw}"
        );
        assert!(
            headers
                .iter()
                .any(|l| l.starts_with("Message-ID: <") && l.ends_with("@example.com>")),
            "{raw}"
        );
        assert!(headers.iter().any(|l| l.starts_with("Date: ")), "{raw}");
        assert!(raw.is_ascii(), "non-ASCII must be transfer-encoded: {raw}");
    }
}
