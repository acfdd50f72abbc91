//! A real ClickHouse engine for the suite: the chDB-backed HTTP server in
//! `tests/clickhouse/chdb_server.py`, started per test with its own data directory, or the
//! server named by `TALLY_TEST_CLICKHOUSE_URL` (each test then uses its own database). If the
//! engine cannot be had, the test fails; it never skips.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally::Config;
use tally_ingest::clickhouse::{ClickHouseConfig, ClickHouseSettings, Compression};

/// The Python with chDB (and the SDKs) that scripts/test.sh installs.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TALLY_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "this test needs the project's Python environment (openai, anthropic, chdb-core): run \
         scripts/test.sh, which creates .venv from tests/requirements.txt, or set TALLY_TEST_PYTHON"
    );
    venv
}

pub struct ClickHouse {
    pub url: String,
    pub database: String,
    pub compression: Compression,
    /// Credentials the engine requires (local engine only).
    pub credentials: Option<(String, String)>,
    /// A file the engine reads its password from on every request, so a test can rotate it.
    pub password_file: Option<PathBuf>,
    child: Option<Child>,
    data: Option<tempfile::TempDir>,
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

fn unique_database() -> String {
    format!("tally_test_{}", uuid::Uuid::now_v7().simple())
}

impl ClickHouse {
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("TALLY_TEST_CLICKHOUSE_URL") {
            return Self {
                url,
                database: unique_database(),
                compression: Compression::Lz4,
                credentials: None,
                password_file: None,
                child: None,
                data: None,
            };
        }
        Self::local(None)
    }

    /// [`ClickHouse::start`] from async code: the engine starts on a blocking thread.
    pub async fn started() -> Self {
        tokio::task::spawn_blocking(Self::start)
            .await
            .expect("start engine")
    }

    /// A local engine that requires this user and password.
    pub fn start_with_credentials(user: &str, password: &str) -> Self {
        Self::local(Some((user.to_owned(), password.to_owned())))
    }

    /// A local engine that requires `user` and the password [`ClickHouse::set_password`] set
    /// last (`password` at first), read on every request.
    pub fn start_rotatable(user: &str, password: &str) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let file = data.path().join("password");
        std::fs::write(&file, password).expect("password file");
        let mut ch = Self {
            url: String::new(),
            database: "tally".into(),
            compression: Compression::None,
            credentials: Some((user.to_owned(), password.to_owned())),
            password_file: Some(file),
            child: None,
            data: Some(data),
        };
        ch.spawn(0);
        ch
    }

    /// Changes the password the engine requires (a rotation), for engines started with
    /// [`ClickHouse::start_rotatable`].
    pub fn set_password(&self, password: &str) {
        let file = self.password_file.as_ref().expect("a rotatable engine");
        std::fs::write(file, password).expect("password file");
    }

    fn local(credentials: Option<(String, String)>) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let mut ch = Self {
            url: String::new(),
            database: "tally".into(),
            compression: Compression::None,
            credentials,
            password_file: None,
            child: None,
            data: Some(data),
        };
        ch.spawn(0);
        ch
    }

    fn data_dir(&self) -> &Path {
        self.data.as_ref().expect("a local engine").path()
    }

    fn spawn(&mut self, port: u16) {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clickhouse/chdb_server.py");
        let mut cmd = Command::new(python());
        cmd.arg(script).arg(port.to_string()).arg(self.data_dir());
        if let Some((user, password)) = &self.credentials {
            cmd.env("CHDB_SERVER_USER", user)
                .env("CHDB_SERVER_PASSWORD", password);
        }
        if let Some(file) = &self.password_file {
            cmd.env("CHDB_SERVER_PASSWORD_FILE", file);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the chDB ClickHouse server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("chDB server did not start: {line:?}"));
        self.url = format!("http://127.0.0.1:{port}");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /ping HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.ends_with("Ok.\n") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chDB server never answered /ping"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the engine (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn configure(&self, c: &mut Config) {
        self.configure_via(c, &self.url);
    }

    /// Points Tally at this engine through `url` (a [`FaultGate`] in front of it, say).
    pub fn configure_via(&self, c: &mut Config, url: &str) {
        c.store.kind = tally::config::StoreKind::Clickhouse;
        c.store.url = Some(url.to_owned());
        c.store.database = Some(self.database.clone());
        c.store.compression = self.compression;
        let (user, password) = self.user_password();
        c.store.user = user;
        c.store.password = password;
    }

    /// The `[store]` lines that point the real binary at this database.
    pub fn store_toml(&self) -> String {
        let (user, password) = self.user_password();
        let compression = match self.compression {
            tally_ingest::clickhouse::Compression::None => "none",
            _ => "lz4",
        };
        let mut s = format!(
            "kind = \"clickhouse\"\nurl = \"{}\"\ndatabase = \"{}\"\ncompression = \"{compression}\"\n",
            self.url, self.database
        );
        if let Some(u) = user {
            s.push_str(&format!("user = {u:?}\n"));
        }
        if let Some(p) = password {
            s.push_str(&format!("password = {p:?}\n"));
        }
        s
    }

    pub fn settings(&self) -> ClickHouseSettings {
        ClickHouseConfig {
            url: self.url.clone(),
            database: Some(self.database.clone()),
            compression: self.compression,
            user: self.user_password().0,
            password: self.user_password().1,
            ..Default::default()
        }
        .validate()
        .expect("valid settings")
    }

    fn user_password(&self) -> (Option<String>, Option<String>) {
        match &self.credentials {
            Some((u, p)) => (Some(u.clone()), Some(p.clone())),
            None => (
                std::env::var("TALLY_TEST_CLICKHOUSE_USER").ok(),
                std::env::var("TALLY_TEST_CLICKHOUSE_PASSWORD").ok(),
            ),
        }
    }

    pub fn client(&self) -> clickhouse::Client {
        self.settings().client()
    }
}

/// A TCP relay that can be cut: an outage of the server behind it, as the client sees one
/// (refused new connections, reset open ones), whatever the server is.
pub struct FaultGate {
    pub url: String,
    up: Arc<AtomicBool>,
    /// When non-zero, every read from the server is held this many milliseconds before it is
    /// relayed: a server that answers slowly.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultGate {
    pub async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gate");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let up = Arc::new(AtomicBool::new(true));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (flag, gen, delay) = (up.clone(), generation.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(client); // refused, as far as the client can tell
                    continue;
                }
                let target = target.clone();
                let mut cut = gen.subscribe();
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = tokio::io::split(server);
                    let upstream = tokio::io::copy(&mut cr, &mut sw);
                    let downstream = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let ms = delay.load(Ordering::SeqCst);
                            if ms > 0 {
                                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = upstream => {}
                        _ = downstream => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            url,
            up,
            delay_ms,
            generation,
            task,
        }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Holds every answer from the server for `ms` milliseconds (0: no delay).
    pub fn slow(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}
