//! A real OpenLDAP `slapd` for the tests: Debian's slapd (2.5), started per test from a
//! `slapd.conf` in a fresh temp dir, mdb backend, on two free loopback ports, `ldap://` (with
//! StartTLS) and `ldaps://`, with a server certificate for `127.0.0.1` and `localhost` signed by
//! a CA generated at start (openssl CLI; nothing kept). Seeded over LDAP (ldap3, as the rootdn)
//! with the base, `ou=people`, `ou=groups`, a search service account, the given users
//! (inetOrgPerson, `{SSHA}` passwords from slappasswd) and their groups (groupOfNames).
//!
//! Access control: anonymous may only authenticate, the search account reads people and
//! groups, a user reads (and may rewrite the password of) their own entry, nobody reads a
//! password. The rootdn (for seeding and `set_attr`) bypasses it.
//!
//! Needs `slapd` (`AGENTPLANE_SLAPD_BIN`, PATH or /usr/sbin), `slappasswd` beside it and
//! `openssl` on PATH: scripts/install-peers installs them. Without them the tests fail: they
//! never skip.

use ldap3::{
    dn_escape, ldap_escape, LdapConnAsync, LdapConnSettings, LdapError, Mod, Scope, SearchEntry,
};
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Debian's locations of the schema files and of the dynamically loaded backends.
const SCHEMA_DIR: &str = "/etc/ldap/schema";
const MODULE_DIR: &str = "/usr/lib/ldap";
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct LdapPeer {
    /// `ldap://127.0.0.1:PORT`, StartTLS capable.
    pub url: String,
    /// `ldaps://127.0.0.1:PORT2`.
    pub ldaps_url: String,
    /// The CA that signed the server certificate, PEM: what a client must trust.
    pub ca_pem: String,
    /// `dc=example,dc=test`.
    pub base_dn: String,
    /// The service account that may search people and groups.
    pub bind_dn: String,
    pub bind_password: String,
    root_dn: String,
    root_password: String,
    slapd: Child,
    /// Config, certificates, database and slapd's log; removed on drop, after slapd is killed.
    dir: tempfile::TempDir,
}

/// A user to seed: `uid=<uid>,ou=people,<base>`, a member of each of `groups`
/// (`cn=<group>,ou=groups,<base>`).
pub struct LdapUser<'a> {
    pub uid: &'a str,
    pub password: &'a str,
    pub mail: &'a str,
    pub cn: &'a str,
    pub groups: &'a [&'a str],
}

impl LdapPeer {
    /// Starts slapd and seeds it (see the module doc). Panics, with slapd's log, if it is not
    /// listening within 15 s.
    pub async fn start(users: &[LdapUser<'_>]) -> LdapPeer {
        let slapd = slapd_bin();
        let slappasswd = slapd.with_file_name("slappasswd");
        assert!(
            slappasswd.is_file(),
            "no slappasswd beside {}: run scripts/install-peers",
            slapd.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("agentplane-ldap-")
            .tempdir()
            .unwrap();
        let ca_pem = make_certificates(dir.path()).await;
        std::fs::create_dir(dir.path().join("db")).unwrap();

        let base_dn = "dc=example,dc=test".to_string();
        let root_dn = format!("cn=admin,{base_dn}");
        let root_password = random_password();
        let bind_dn = format!("cn=search,{base_dn}");
        let bind_password = random_password();
        let conf = dir.path().join("slapd.conf");
        std::fs::write(
            &conf,
            slapd_conf(dir.path(), &base_dn, &root_dn, &root_password, &bind_dn),
        )
        .unwrap();

        // The ports are free when picked, not reserved: on the rare lost race, pick again.
        let log = dir.path().join("slapd.log");
        let mut attempt = 0;
        let (child, port, tls_port) = loop {
            attempt += 1;
            let (port, tls_port) = (free_port(), free_port());
            let log_file = std::fs::File::create(&log).unwrap();
            let mut child = Command::new(&slapd)
                .arg("-f")
                .arg(&conf)
                .arg("-h")
                .arg(format!(
                    "ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{tls_port}/"
                ))
                // Any -d keeps slapd in the foreground; `stats` logs connections and operations.
                .args(["-d", "stats"])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", slapd.display()));
            match wait_listening(&mut child, &[port, tls_port]).await {
                Ok(()) => break (child, port, tls_port),
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if attempt < 3 && text.contains("Address already in use") {
                        continue;
                    }
                    panic!("slapd did not start ({why}); its log:\n{text}");
                }
            }
        };

        let peer = LdapPeer {
            url: format!("ldap://127.0.0.1:{port}"),
            ldaps_url: format!("ldaps://127.0.0.1:{tls_port}"),
            ca_pem,
            base_dn,
            bind_dn,
            bind_password,
            root_dn,
            root_password,
            slapd: child,
            dir,
        };
        peer.seed(users, &slappasswd).await;
        peer
    }

    /// `uid=<uid>,ou=people,<base>`.
    pub fn user_dn(&self, uid: &str) -> String {
        format!("uid={},ou=people,{}", dn_escape(uid), self.base_dn)
    }

    /// `cn=<group>,ou=groups,<base>`.
    pub fn group_dn(&self, group: &str) -> String {
        format!("cn={},ou=groups,{}", dn_escape(group), self.base_dn)
    }

    /// Replaces one attribute of a user (`mail`, `cn`, ...) with a single value, as the rootdn.
    pub async fn set_attr(&self, uid: &str, attr: &str, value: &str) {
        let mut ldap = self.root_session().await;
        ldap.modify(
            &self.user_dn(uid),
            vec![Mod::Replace(attr, HashSet::from([value]))],
        )
        .await
        .unwrap()
        .success()
        .unwrap_or_else(|e| panic!("set {attr} of {uid}: {e}\n{}", self.log()));
        ldap.unbind().await.unwrap();
    }

    /// slapd's log so far (`-d stats`), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    async fn root_session(&self) -> ldap3::Ldap {
        let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(5));
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .unwrap();
        ldap3::drive!(conn);
        ldap.simple_bind(&self.root_dn, &self.root_password)
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|e| panic!("rootdn bind: {e}\n{}", self.log()));
        ldap
    }

    async fn seed(&self, users: &[LdapUser<'_>], slappasswd: &Path) {
        let mut ldap = self.root_session().await;
        let mut add = async |dn: &str, attrs: Vec<(&str, Vec<&str>)>| {
            let attrs = attrs
                .into_iter()
                .map(|(name, values)| (name, values.into_iter().collect::<HashSet<_>>()))
                .collect();
            ldap.add(dn, attrs)
                .await
                .unwrap()
                .success()
                .unwrap_or_else(|e| panic!("seeding {dn}: {e}\n{}", self.log()));
        };

        add(
            &self.base_dn,
            vec![
                ("objectClass", vec!["dcObject", "organization"]),
                ("dc", vec!["example"]),
                ("o", vec!["Agentplane test directory"]),
            ],
        )
        .await;
        for ou in ["people", "groups"] {
            add(
                &format!("ou={ou},{}", self.base_dn),
                vec![
                    ("objectClass", vec!["organizationalUnit"]),
                    ("ou", vec![ou]),
                ],
            )
            .await;
        }
        let hash = ssha(slappasswd, &self.bind_password).await;
        add(
            &self.bind_dn,
            vec![
                (
                    "objectClass",
                    vec!["organizationalRole", "simpleSecurityObject"],
                ),
                ("cn", vec!["search"]),
                ("userPassword", vec![&hash]),
            ],
        )
        .await;

        let mut groups: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for user in users {
            let dn = self.user_dn(user.uid);
            let hash = ssha(slappasswd, user.password).await;
            // sn is mandatory for a person: the last word of the common name.
            let sn = user.cn.split_whitespace().last().unwrap_or(user.cn);
            add(
                &dn,
                vec![
                    (
                        "objectClass",
                        vec!["inetOrgPerson", "organizationalPerson", "person"],
                    ),
                    ("uid", vec![user.uid]),
                    ("cn", vec![user.cn]),
                    ("sn", vec![sn]),
                    ("mail", vec![user.mail]),
                    ("userPassword", vec![&hash]),
                ],
            )
            .await;
            for group in user.groups {
                groups.entry(group).or_default().push(dn.clone());
            }
        }
        for (group, members) in &groups {
            add(
                &self.group_dn(group),
                vec![
                    ("objectClass", vec!["groupOfNames"]),
                    ("cn", vec![group]),
                    ("member", members.iter().map(String::as_str).collect()),
                ],
            )
            .await;
        }
        ldap.unbind().await.unwrap();
    }
}

impl Drop for LdapPeer {
    fn drop(&mut self) {
        let _ = self.slapd.kill();
        let _ = self.slapd.wait();
    }
}

fn slapd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("AGENTPLANE_SLAPD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "AGENTPLANE_SLAPD_BIN={} does not exist; run scripts/install-peers",
            bin.display()
        );
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("slapd"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "OpenLDAP's slapd was not found (AGENTPLANE_SLAPD_BIN, PATH, /usr/sbin): \
                 run scripts/install-peers (or scripts/test, which runs it)"
            )
        })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn random_password() -> String {
    let mut rng = rand::thread_rng();
    (0..24)
        .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
        .collect()
}

/// Until every port accepts a connection (slapd opens its listeners once the database is
/// ready), or slapd exits, or the start timeout passes.
async fn wait_listening(child: &mut Child, ports: &[u16]) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("it exited: {status}"));
        }
        let mut all = true;
        for port in ports {
            all &= tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_ok();
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not listening after {START_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let program = program.as_ref();
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program:?} (run scripts/install-peers): {e}"));
    assert!(
        out.status.success(),
        "{program:?} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `{SSHA}` of a password, by slapd's own slappasswd.
async fn ssha(slappasswd: &Path, password: &str) -> String {
    let hash = run(slappasswd, &["-h", "{SSHA}", "-s", password]).await;
    let hash = hash.trim().to_string();
    assert!(hash.starts_with("{SSHA}"), "slappasswd said {hash:?}");
    hash
}

/// A throwaway CA and a server certificate it signs for IP 127.0.0.1 and DNS localhost (P-256,
/// two days), as `ca.pem`, `server.pem` and `server.key` in `dir`. Returns the CA's PEM.
async fn make_certificates(dir: &Path) -> String {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (ca_key, ca_pem, key, csr, cert, ext) = (
        path("ca.key"),
        path("ca.pem"),
        path("server.key"),
        path("server.csr"),
        path("server.pem"),
        path("server.ext"),
    );
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut args = vec!["req", "-x509", "-new", "-nodes", "-days", "2"];
    args.extend(ec);
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
        "-subj",
        "/O=Agentplane tests/CN=Agentplane test LDAP CA",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run("openssl", &args).await;

    let mut args = vec!["req", "-new", "-nodes"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    run("openssl", &args).await;

    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    let serial = format!("0x{:016x}", rand::thread_rng().gen::<u64>() >> 1);
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    )
    .await;
    std::fs::read_to_string(&ca_pem).unwrap()
}

fn slapd_conf(dir: &Path, base: &str, root_dn: &str, root_password: &str, search: &str) -> String {
    let d = dir.display();
    let mut conf = String::new();
    for schema in ["core", "cosine", "inetorgperson"] {
        writeln!(conf, "include {SCHEMA_DIR}/{schema}.schema").unwrap();
    }
    write!(
        conf,
        r#"
modulepath {MODULE_DIR}
moduleload back_mdb
pidfile "{d}/slapd.pid"
argsfile "{d}/slapd.args"

TLSCACertificateFile "{d}/ca.pem"
TLSCertificateFile "{d}/server.pem"
TLSCertificateKeyFile "{d}/server.key"

password-hash {{SSHA}}

database mdb
maxsize 16777216
suffix "{base}"
rootdn "{root_dn}"
rootpw "{root_password}"
directory "{d}/db"
index objectClass,uid,member,mail eq

# Passwords: anonymous may authenticate against them, their owner may replace them, nobody
# reads them.
access to attrs=userPassword
    by anonymous auth
    by self =xw
    by * none
access to dn.subtree="ou=people,{base}"
    by dn.exact="{search}" read
    by self read
    by * none
access to dn.subtree="ou=groups,{base}"
    by dn.exact="{search}" read
    by * none
access to *
    by dn.exact="{search}" read
    by * none
"#
    )
    .unwrap();
    conf
}

// The self-test.

/// A rustls client config (ring) trusting exactly the PEM's certificates: none for `None`.
fn tls_config(ca_pem: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn connect(
    url: &str,
    starttls: bool,
    ca_pem: Option<&str>,
) -> Result<ldap3::Ldap, LdapError> {
    let settings = LdapConnSettings::new()
        .set_conn_timeout(Duration::from_secs(5))
        .set_starttls(starttls)
        .set_config(tls_config(ca_pem));
    let (conn, ldap) = LdapConnAsync::with_settings(settings, url).await?;
    ldap3::drive!(conn);
    Ok(ldap)
}

fn rc(result: Result<ldap3::LdapResult, LdapError>) -> u32 {
    match result {
        Ok(result) => result.rc,
        Err(LdapError::LdapResult { result }) => result.rc,
        Err(e) => panic!("not an LDAP result: {e}"),
    }
}

#[tokio::test]
async fn the_ldap_peer_binds_searches_and_speaks_tls() {
    let started = Instant::now();
    let peer = LdapPeer::start(&[
        LdapUser {
            uid: "alice",
            password: "alice-pw",
            mail: "alice@example.test",
            cn: "Alice Liddell",
            groups: &["engineers"],
        },
        LdapUser {
            uid: "bob",
            password: "bob-pw",
            mail: "bob@example.test",
            cn: "Bob Builder",
            groups: &[],
        },
    ])
    .await;
    eprintln!("slapd started and seeded in {:?}", started.elapsed());
    let alice = peer.user_dn("alice");
    let people = format!("ou=people,{}", peer.base_dn);
    let groups = format!("ou=groups,{}", peer.base_dn);

    // (a) StartTLS on ldap://, trusting the CA.
    let mut ldap = connect(&peer.url, true, Some(&peer.ca_pem)).await.unwrap();
    ldap.simple_bind(&peer.bind_dn, &peer.bind_password)
        .await
        .unwrap()
        .success()
        .unwrap();
    let filter = format!("(uid={})", ldap_escape("alice"));
    let (entries, _) = ldap
        .search(
            &people,
            Scope::Subtree,
            &filter,
            vec!["mail", "cn", "userPassword"],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(entries.len(), 1);
    let entry = SearchEntry::construct(entries.into_iter().next().unwrap());
    assert_eq!(entry.dn, alice);
    assert_eq!(entry.attrs["mail"], ["alice@example.test"]);
    assert_eq!(entry.attrs["cn"], ["Alice Liddell"]);
    assert!(
        !entry.attrs.contains_key("userPassword") && entry.bin_attrs.is_empty(),
        "the search account read a password: {entry:?}"
    );
    let filter = format!("(member={})", ldap_escape(&alice));
    let (entries, _) = ldap
        .search(&groups, Scope::Subtree, &filter, vec!["cn"])
        .await
        .unwrap()
        .success()
        .unwrap();
    let names: Vec<_> = entries
        .into_iter()
        .map(|e| SearchEntry::construct(e).attrs["cn"].clone())
        .collect();
    assert_eq!(names, [["engineers"]]);

    // Same connection, now as alice: she authenticates and reads her own entry; bob's does not
    // even exist for her (noSuchObject, 32), nor does anything for anonymous.
    ldap.simple_bind(&alice, "alice-pw")
        .await
        .unwrap()
        .success()
        .unwrap();
    let (entries, _) = ldap
        .search(&alice, Scope::Base, "(objectClass=*)", vec!["mail"])
        .await
        .unwrap()
        .success()
        .unwrap();
    let entry = SearchEntry::construct(entries.into_iter().next().unwrap());
    assert_eq!(entry.attrs["mail"], ["alice@example.test"]);
    let bob = peer.user_dn("bob");
    let found = ldap
        .search(&bob, Scope::Base, "(objectClass=*)", vec!["mail"])
        .await
        .unwrap();
    assert!(
        found.0.is_empty() && found.1.rc == 32,
        "alice read bob: {found:?}"
    );
    assert_eq!(rc(ldap.simple_bind(&alice, "wrong").await), 49);
    ldap.unbind().await.unwrap();

    let mut ldap = connect(&peer.url, true, Some(&peer.ca_pem)).await.unwrap();
    for base in [&peer.base_dn, &people, &alice] {
        let found = ldap
            .search(base, Scope::Subtree, "(objectClass=*)", vec!["*"])
            .await
            .unwrap();
        assert!(
            found.0.is_empty() && found.1.rc == 32,
            "anonymous read {base}: {found:?}"
        );
    }
    ldap.unbind().await.unwrap();

    // Attribute changes as the rootdn show up for the search account.
    peer.set_attr("alice", "mail", "alice@new.example.test")
        .await;
    peer.set_attr("alice", "cn", "Alice Pleasance Liddell")
        .await;

    // (b) ldaps://: alice's bind, right and wrong; the changed attributes.
    let mut ldap = connect(&peer.ldaps_url, false, Some(&peer.ca_pem))
        .await
        .unwrap();
    assert_eq!(rc(ldap.simple_bind(&alice, "wrong").await), 49);
    assert_eq!(rc(ldap.simple_bind(&alice, "alice-pw").await), 0);
    ldap.simple_bind(&peer.bind_dn, &peer.bind_password)
        .await
        .unwrap()
        .success()
        .unwrap();
    let (entries, _) = ldap
        .search(&people, Scope::Subtree, "(uid=alice)", vec!["mail", "cn"])
        .await
        .unwrap()
        .success()
        .unwrap();
    let entry = SearchEntry::construct(entries.into_iter().next().unwrap());
    assert_eq!(entry.attrs["mail"], ["alice@new.example.test"]);
    assert_eq!(entry.attrs["cn"], ["Alice Pleasance Liddell"]);
    ldap.unbind().await.unwrap();

    // (c) A client that does not trust the CA gets no connection, StartTLS or ldaps.
    for (url, starttls) in [(&peer.url, true), (&peer.ldaps_url, false)] {
        let err = connect(url, starttls, None).await.err();
        let err = err.unwrap_or_else(|| panic!("{url} without the CA connected"));
        assert!(
            format!("{err:?}").contains("UnknownIssuer"),
            "{url}: not a certificate rejection: {err:?}"
        );
    }
    eprintln!("whole self-test in {:?}", started.elapsed());
}
