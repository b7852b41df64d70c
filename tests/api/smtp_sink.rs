//! An SMTP server for the tests: a real, minimal RFC 5321 server on loopback that records
//! every accepted message. No TLS, no AUTH, no extensions: EHLO answers `250` and nothing
//! more, so a client has to speak plain SMTP. Commands: EHLO/HELO, MAIL FROM, RCPT TO,
//! DATA (dot-terminated, dot-unstuffed), RSET, NOOP, QUIT; anything else gets `502`.

use base64::Engine as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct SmtpSink {
    pub addr: SocketAddr,
    messages: Arc<Mutex<Vec<Received>>>,
    /// The accept loop; it owns the connections, so aborting it (on drop) ends them too.
    server: JoinHandle<()>,
}

/// One accepted message: the envelope and the DATA exactly as received, dot-unstuffed.
#[derive(Clone, Debug)]
pub struct Received {
    /// The `MAIL FROM` path (empty for the null reverse-path `<>`).
    pub from: String,
    /// The `RCPT TO` paths, in order.
    pub to: Vec<String>,
    /// The full raw message, headers included, CRLF line endings, up to and including the
    /// line break before the terminating `.`.
    pub data: String,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let store = messages.clone();
        let server = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                connections.spawn(serve(stream, store.clone()));
            }
        });
        SmtpSink {
            addr,
            messages,
            server,
        }
    }

    /// `smtp://127.0.0.1:PORT`, for `Mailer::from_url`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits (polling, up to 10 s) until at least n messages arrived; panics with a clear message otherwise.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "SMTP sink at {}: expected at least {n} message(s) within 10 s, got {}: {messages:#?}",
                    self.addr,
                    messages.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Received {
    /// The decoded text body (quoted-printable, base64 or 7bit/8bit as the
    /// `Content-Transfer-Encoding` says), UTF-8, with line endings turned into `\n`. The line
    /// break just before the terminating dot counts as SMTP framing (lettre always adds one),
    /// so a body sent as `"a\nb"` comes back as `"a\nb"`.
    pub fn body(&self) -> String {
        let raw = match self
            .data
            .split_once("\r\n\r\n")
            .or_else(|| self.data.split_once("\n\n"))
        {
            Some((_, body)) => body,
            None => "",
        };
        let raw = raw
            .strip_suffix("\r\n")
            .or_else(|| raw.strip_suffix('\n'))
            .unwrap_or(raw);
        let encoding = self
            .header("Content-Transfer-Encoding")
            .map(|e| e.trim().to_ascii_lowercase());
        let bytes = match encoding.as_deref() {
            Some("base64") => {
                let compact: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .unwrap_or_else(|e| panic!("bad base64 body ({e}): {raw:?}"))
            }
            Some("quoted-printable") => decode_quoted_printable(raw.as_bytes()),
            _ => raw.as_bytes().to_vec(),
        };
        String::from_utf8(bytes)
            .unwrap_or_else(|e| panic!("body is not UTF-8 ({e}): {raw:?}"))
            .replace("\r\n", "\n")
    }

    /// The `Subject`, decoded if RFC 2047 encoded (B or Q; the charset is taken as UTF-8).
    pub fn subject(&self) -> Option<String> {
        self.header("Subject")
            .map(|s| decode_rfc2047(s.trim_start()))
    }

    /// The first header of that name (case-insensitive), unfolded, not decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every header, unfolded (RFC 5322 §2.2.3: a line starting with white space continues
    /// the one before), value with the one space after the colon removed.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in self.data.lines() {
            if line.is_empty() {
                break;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    value.push_str(line);
                }
            } else if let Some((name, value)) = line.split_once(':') {
                let value = value.strip_prefix(' ').unwrap_or(value);
                headers.push((name.to_owned(), value.to_owned()));
            }
        }
        headers
    }
}

/// One SMTP session. Envelope state is reset by EHLO/HELO, RSET and each accepted DATA.
async fn serve(stream: TcpStream, messages: Arc<Mutex<Vec<Received>>>) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    writer.write_all(b"220 smtp-sink ESMTP ready\r\n").await?;

    let mut greeted = false;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(()); // the client hung up
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, arg) = match text.split_once(' ') {
            Some((verb, arg)) => (verb, arg.trim()),
            None => (text, ""),
        };
        let reply: String = match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if arg.is_empty() => "501 5.5.4 Syntax: EHLO domain".into(),
            "EHLO" | "HELO" => {
                greeted = true;
                from = None;
                to.clear();
                format!("250-smtp-sink greets {arg}\r\n250 OK")
            }
            "MAIL" if !greeted => "503 5.5.1 Send EHLO first".into(),
            "MAIL" if from.is_some() => "503 5.5.1 Sender already given".into(),
            "MAIL" => match path_argument(arg, "FROM:") {
                Some(path) => {
                    from = Some(path);
                    "250 2.1.0 OK".into()
                }
                None => "501 5.5.4 Syntax: MAIL FROM:<address>".into(),
            },
            "RCPT" if from.is_none() => "503 5.5.1 Need MAIL first".into(),
            "RCPT" => match path_argument(arg, "TO:").filter(|p| !p.is_empty()) {
                Some(path) => {
                    to.push(path);
                    "250 2.1.5 OK".into()
                }
                None => "501 5.5.4 Syntax: RCPT TO:<address>".into(),
            },
            "DATA" if from.is_none() || to.is_empty() => {
                "503 5.5.1 Need MAIL and RCPT first".into()
            }
            "DATA" => {
                writer
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let data = read_data(&mut reader).await?;
                let received = Received {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data: String::from_utf8_lossy(&data).into_owned(),
                };
                messages.lock().unwrap().push(received);
                "250 2.0.0 OK queued".into()
            }
            "RSET" => {
                from = None;
                to.clear();
                "250 2.0.0 OK".into()
            }
            "NOOP" => "250 2.0.0 OK".into(),
            "QUIT" => {
                writer.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 Command not implemented".into(),
        };
        writer.write_all(reply.as_bytes()).await?;
        writer.write_all(b"\r\n").await?;
    }
}

/// `FROM:<a@b> [params]` → `a@b` (`<>` → empty); `None` if malformed.
fn path_argument(arg: &str, keyword: &str) -> Option<String> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start().strip_prefix('<')?;
    let (path, _params) = rest.split_once('>')?;
    Some(path.to_owned())
}

/// The DATA lines up to the lone `.`, dot-unstuffed (RFC 5321 §4.5.2).
async fn read_data(reader: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(data);
        }
        data.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
    }
}

fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(hi)? * 16 + digit(lo)?) as u8)
}

/// RFC 2045 §6.7: `=XX` is a byte, `=` at the end of a line a soft line break.
fn decode_quoted_printable(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'=' {
            let rest = &input[i + 1..];
            if rest.starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if rest.starts_with(b"\n") {
                i += 2;
                continue;
            }
            if let [hi, lo, ..] = rest {
                if let Some(byte) = hex_pair(*hi, *lo) {
                    out.push(byte);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// RFC 2047 encoded words (`=?charset?B|Q?text?=`) in a header value; white space between
/// two adjacent encoded words is dropped and their bytes joined before UTF-8 decoding (a
/// character may be split across words).
fn decode_rfc2047(value: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u8> = Vec::new(); // bytes of a run of adjacent encoded words
    let mut rest = value;
    while let Some(start) = rest.find("=?") {
        let (before, word) = rest.split_at(start);
        match encoded_word(word) {
            Some((bytes, len)) => {
                let adjacent = !pending.is_empty() && before.chars().all(char::is_whitespace);
                if !adjacent {
                    out.push_str(&String::from_utf8_lossy(&pending));
                    pending.clear();
                    out.push_str(before);
                }
                pending.extend(bytes);
                rest = &word[len..];
            }
            None => {
                out.push_str(&String::from_utf8_lossy(&pending));
                pending.clear();
                out.push_str(before);
                out.push_str("=?");
                rest = &word[2..];
            }
        }
    }
    out.push_str(&String::from_utf8_lossy(&pending));
    out.push_str(rest);
    out
}

/// Decodes the encoded word at the start of `s`: its bytes and its length in `s`.
fn encoded_word(s: &str) -> Option<(Vec<u8>, usize)> {
    let inner = s.strip_prefix("=?")?;
    let (_charset, inner) = inner.split_once('?')?;
    let (encoding, inner) = inner.split_once('?')?;
    let end = inner.find("?=")?;
    let text = &inner[..end];
    if text.contains(char::is_whitespace) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
        "Q" | "q" => {
            let raw = text.as_bytes();
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                match raw[i] {
                    b'_' => out.push(b' '),
                    b'=' => {
                        out.push(hex_pair(*raw.get(i + 1)?, *raw.get(i + 2)?)?);
                        i += 2;
                    }
                    b => out.push(b),
                }
                i += 1;
            }
            out
        }
        _ => return None,
    };
    let len = s.len() - inner.len() + end + 2;
    Some((bytes, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentplane_control::mail::Mailer;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn mailer_round_trip_through_a_real_smtp_server() {
        let sink = SmtpSink::start().await;
        let mailer =
            Mailer::from_url(&sink.url(), "Agentplane <noreply@agentplane.example>").unwrap();
        let subject = "Einladung für Acme";
        let body = "Hallo Jane,\n\
                    .this line starts with a dot\n\
                    ..and this one with two\n\
                    .\n\
                    Grüße aus Köln — ✓\n\
                    A long line that quoted-printable has to break with soft line breaks, \
                    because it is far longer than seventy-six characters: äöü.\n\
                    Bis bald";
        mailer
            .send("Jane Doe <jane@acme.example>", subject, body)
            .await
            .unwrap();

        let messages = sink.wait_for(1).await;
        assert_eq!(messages.len(), 1);
        let m = &messages[0];
        assert_eq!(m.from, "noreply@agentplane.example");
        assert_eq!(m.to, vec!["jane@acme.example".to_owned()]);
        assert_eq!(m.subject().as_deref(), Some(subject));
        assert_eq!(m.body(), body);
        assert_eq!(
            m.header("From").as_deref(),
            Some("Agentplane <noreply@agentplane.example>")
        );
        assert_eq!(
            m.header("To").as_deref(),
            Some("\"Jane Doe\" <jane@acme.example>")
        );
        // On the wire everything is 7-bit: the subject as RFC 2047, the body transfer-encoded.
        assert!(m.data.is_ascii(), "{}", m.data);
        assert!(
            m.header("Subject").unwrap().contains("=?utf-8?"),
            "{}",
            m.data
        );
        assert!(
            m.header("Content-Transfer-Encoding").is_some(),
            "{}",
            m.data
        );
    }

    #[tokio::test]
    async fn base64_bodies_and_several_messages() {
        let sink = SmtpSink::start().await;
        let mailer = Mailer::from_url(&sink.url(), "noreply@agentplane.example").unwrap();
        // Mostly non-Latin text: lettre picks base64 over quoted-printable.
        let body = "こんにちは、世界。\n.点で始まる行\nテナントへようこそ。";
        mailer
            .send("a@acme.example", "Willkommen 👋", body)
            .await
            .unwrap();
        mailer
            .send("b@acme.example", "plain ascii", "just text\n")
            .await
            .unwrap();

        let messages = sink.wait_for(2).await;
        assert_eq!(
            messages[0].header("Content-Transfer-Encoding").as_deref(),
            Some("base64"),
            "{}",
            messages[0].data
        );
        assert_eq!(messages[0].body(), body);
        assert_eq!(messages[0].subject().as_deref(), Some("Willkommen 👋"));
        assert_eq!(messages[1].to, vec!["b@acme.example".to_owned()]);
        assert_eq!(messages[1].subject().as_deref(), Some("plain ascii"));
        assert_eq!(messages[1].body(), "just text\n");
    }

    /// Reads one (possibly multi-line) reply and returns it whole.
    async fn reply(reader: &mut (impl AsyncBufRead + Unpin)) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).await.unwrap() > 0,
                "closed: {all}"
            );
            all.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return all;
            }
        }
    }

    async fn say(
        w: &mut (impl AsyncWriteExt + Unpin),
        r: &mut (impl AsyncBufRead + Unpin),
        line: &str,
    ) -> String {
        w.write_all(line.as_bytes()).await.unwrap();
        reply(r).await
    }

    #[tokio::test]
    async fn speaks_plain_smtp() {
        let sink = SmtpSink::start().await;
        let (r, mut w) = TcpStream::connect(sink.addr).await.unwrap().into_split();
        let mut r = BufReader::new(r);
        assert!(reply(&mut r).await.starts_with("220 "));
        assert!(say(&mut w, &mut r, "MAIL FROM:<a@x.example>\r\n")
            .await
            .starts_with("503 "));
        assert!(say(&mut w, &mut r, "STARTTLS\r\n")
            .await
            .starts_with("502 "));
        assert!(say(&mut w, &mut r, "AUTH PLAIN AGEAYg==\r\n")
            .await
            .starts_with("502 "));
        let ehlo = say(&mut w, &mut r, "EHLO client.example\r\n").await;
        assert!(ehlo.starts_with("250-"), "{ehlo}");
        assert!(ehlo.ends_with("250 OK\r\n"), "{ehlo}");
        assert!(!ehlo.to_ascii_uppercase().contains("STARTTLS"), "{ehlo}");
        assert!(!ehlo.to_ascii_uppercase().contains("AUTH"), "{ehlo}");
        assert!(say(&mut w, &mut r, "NOOP\r\n").await.starts_with("250 "));
        assert!(say(&mut w, &mut r, "RCPT TO:<b@y.example>\r\n")
            .await
            .starts_with("503 "));
        assert!(say(&mut w, &mut r, "MAIL FROM:<dropped@x.example>\r\n")
            .await
            .starts_with("250 "));
        assert!(say(&mut w, &mut r, "RCPT TO:<dropped@y.example>\r\n")
            .await
            .starts_with("250 "));
        assert!(say(&mut w, &mut r, "RSET\r\n").await.starts_with("250 "));
        assert!(say(&mut w, &mut r, "DATA\r\n").await.starts_with("503 "));
        assert!(say(&mut w, &mut r, "mail from: <a@x.example> SIZE=100\r\n")
            .await
            .starts_with("250 "));
        assert!(say(&mut w, &mut r, "RCPT TO:<>\r\n")
            .await
            .starts_with("501 "));
        assert!(say(&mut w, &mut r, "RCPT TO:<b@y.example>\r\n")
            .await
            .starts_with("250 "));
        assert!(say(&mut w, &mut r, "RCPT TO:<c@z.example>\r\n")
            .await
            .starts_with("250 "));
        assert!(say(&mut w, &mut r, "DATA\r\n").await.starts_with("354 "));
        let sent = "Subject: hi\r\n\r\n..leading dot\r\n...\r\nlast\r\n.\r\n";
        assert!(say(&mut w, &mut r, sent).await.starts_with("250 "));
        assert!(say(&mut w, &mut r, "QUIT\r\n").await.starts_with("221 "));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "server kept talking after QUIT");

        let messages = sink.wait_for(1).await;
        assert_eq!(
            messages.len(),
            1,
            "RSET must have dropped the first envelope"
        );
        assert_eq!(messages[0].from, "a@x.example");
        assert_eq!(messages[0].to, vec!["b@y.example", "c@z.example"]);
        assert_eq!(
            messages[0].data,
            "Subject: hi\r\n\r\n.leading dot\r\n..\r\nlast\r\n"
        );
        assert_eq!(messages[0].body(), ".leading dot\n..\nlast");
    }

    #[test]
    fn decoders() {
        assert_eq!(
            decode_quoted_printable(b"Gr=C3=BC=\r\n=C3=9Fe =3D ok=\nx\r\n"),
            "Grüße = okx\r\n".as_bytes()
        );
        // Adjacent encoded words, a character split across them, Q with underscores.
        assert_eq!(
            decode_rfc2047(
                "=?utf-8?b?RsM=?=\r\n =?UTF-8?B?vHI=?= Acme =?utf-8?q?gr=C3=BC=C3=9Fe_dich?="
            ),
            "Für Acme grüße dich"
        );
        assert_eq!(decode_rfc2047("no =? words here ?="), "no =? words here ?=");
        assert_eq!(
            decode_rfc2047("Einladung =?utf-8?b?ZsO8cg==?= Acme"),
            "Einladung für Acme"
        );
    }
}
