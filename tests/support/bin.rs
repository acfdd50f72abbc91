//! The real `tally` binary as a subprocess on free ports, for tests where the process itself
//! matters: memory from `/proc`, signals, descriptor limits, `kill -9`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_healthy, TALLY_BIN};

/// Extra config and process settings for [`Bin::start_with`].
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Lines for `[proxy]`.
    pub proxy: String,
    /// Lines for `[dashboard]`.
    pub dashboard: String,
    /// Further tables, after `[providers.openai]`.
    pub rest: String,
    /// More lines for `[store]` (another kind of store).
    pub store: String,
    /// A spool directory other than `<dir>/spool` (to share one).
    pub spool_dir: Option<std::path::PathBuf>,
    /// Start under this soft open-file limit (the hard limit stays).
    pub soft_nofile: Option<u32>,
}

/// The real binary on free ports with its own SQLite store.
pub struct Bin {
    child: Option<Child>,
    pub proxy: u16,
    pub dash: u16,
    pub dir: tempfile::TempDir,
}

impl Bin {
    pub async fn start(upstream: &str) -> Self {
        Self::start_in(upstream, tempfile::tempdir().expect("tempdir")).await
    }

    pub async fn start_in(upstream: &str, dir: tempfile::TempDir) -> Self {
        Self::start_with(upstream, dir, &Options::default()).await
    }

    /// Starts the binary with `options`: extra config (TOML lines, each under its `[table]`),
    /// and a soft open-file limit to start under. Its log goes to `tally.log` in `dir`.
    pub async fn start_with(upstream: &str, dir: tempfile::TempDir, options: &Options) -> Self {
        let (proxy, dash) = (free_port(), free_port());
        let cfg = dir.path().join("tally.toml");
        let spool = options
            .spool_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("spool"));
        std::fs::write(
            &cfg,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:{proxy}\"\n{proxy_extra}\n\
                 [dashboard]\nlisten = \"127.0.0.1:{dash}\"\n{dashboard_extra}\n\
                 [store]\npath = \"{db}\"\nspool_dir = \"{spool}\"\n{store_extra}\n\
                 [providers.openai]\nbase_url = \"{upstream}\"\n{rest}\n",
                proxy_extra = options.proxy,
                dashboard_extra = options.dashboard,
                rest = options.rest,
                store_extra = options.store,
                db = dir.path().join("tally.db").display(),
                spool = spool.display(),
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join("tally.log")).expect("log file");
        let mut cmd = match options.soft_nofile {
            // The shell lowers the soft limit only, as a login session's default does.
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -Sn {n} && exec \"$0\" \"$@\"")])
                    .arg(TALLY_BIN);
                c
            }
            None => Command::new(TALLY_BIN),
        };
        let child = cmd
            .args(["--config", cfg.to_str().expect("utf8")])
            .env_remove("TALLY_CLICKHOUSE_URL")
            .env("TALLY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tally");
        wait_healthy(dash, Duration::from_secs(20)).await;
        Self {
            child: Some(child),
            proxy,
            dash,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.proxy)
    }

    /// (current, peak) resident memory in MiB, from /proc.
    pub fn rss_mib(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    pub async fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait")
    }

    /// What the binary logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tally.log")).unwrap_or_default()
    }

    /// Waits until the log holds `needle`, failing with the log after `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the log: {}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn dashboard_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.dash)
    }

    pub fn rows(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(self.dir.path().join("tally.db")).expect("open");
        conn.query_row(sql, [], |r| r.get(0)).expect("query")
    }

    /// Waits (bounded) until the store has at least `n` records; shows the log if not.
    pub async fn wait_for_rows(&self, n: i64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.rows("SELECT count(*) FROM requests") < n {
            assert!(std::time::Instant::now() < deadline, "{}", self.log());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Asserts that `/metrics` holds each of `lines` exactly as written.
    pub async fn assert_metrics(&self, lines: &[&str]) {
        let (_, _, body) = super::get(&self.dashboard_url("/metrics")).await;
        let metrics = String::from_utf8_lossy(&body);
        for line in lines {
            assert!(metrics.contains(line), "no {line} in\n{metrics}");
        }
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes `dir/tally.toml` for a Tally on free ports with its store in `dir` and its spool at
/// `spool`, for tests that expect the binary to refuse to start.
pub fn minimal_config(dir: &std::path::Path, spool: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("tally.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{}\"\n[dashboard]\nlisten = \"127.0.0.1:{}\"\n\
             [store]\npath = \"{}\"\nspool_dir = \"{}\"\n",
            free_port(),
            free_port(),
            dir.join("tally.db").display(),
            spool.display()
        ),
    )
    .expect("config");
    cfg
}
