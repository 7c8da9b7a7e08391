//! What the command-line tests share: running `morphogen`, building
//! tables, and serving them from a child process. Each test binary uses a
//! part of it.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub fn morphogen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_morphogen")).args(args).output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Builds `dir/t.mgdb` (pages of 512 bytes) from CSV `rows` (`key,value` lines, no header).
pub fn build_from_csv(dir: &Path, rows: &str) -> PathBuf {
    build_named(dir, "t.mgdb", rows)
}

/// Builds `dir/name` (pages of 512 bytes) from CSV `rows` (`key,value` lines, no header).
pub fn build_named(dir: &Path, name: &str, rows: &str) -> PathBuf {
    let (csv, table) = (dir.join(format!("{name}.csv")), dir.join(name));
    fs::write(&csv, format!("key,value\n{rows}")).unwrap();
    let built = morphogen(&[
        "build",
        "--input",
        csv.to_str().unwrap(),
        "--output",
        table.to_str().unwrap(),
        "--page-size",
        "512",
    ]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    table
}

/// A `morphogen serve` process on a loopback port of the system's choice; killed when dropped.
pub struct Serving {
    pub child: Child,
    pub url: String,
    /// Everything it has logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// How long a server started by a test may take to say where it listens:
/// far more than any does, so that one that hangs fails its test instead of
/// stalling the run.
const STARTUP_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Serving {
    /// Kills the process (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(table: &Path, engine: &str) -> Serving {
    serve_with(&["--db", table.to_str().unwrap(), "--engine", engine])
}

/// `morphogen serve` with `options`, which name the table.
pub fn serve_with(options: &[&str]) -> Serving {
    serve_with_env(options, &[])
}

/// The admin routes of the server at `url`, with `token` and a 10 s limit.
pub fn admin(url: &str, token: &str) -> morphogen_client::Admin {
    let settings =
        morphogen_client::Settings { timeout: std::time::Duration::from_secs(10), ..Default::default() };
    morphogen_client::Admin::new(url, token, &settings).unwrap()
}

/// `morphogen serve` on `listen` (an address and port) with `options`:
/// for a server restarted where its clients know it.
pub fn serve_at(listen: &str, options: &[&str]) -> Serving {
    let mut command = Command::new(env!("CARGO_BIN_EXE_morphogen"));
    command.args(["serve", "--listen", listen]).args(options);
    Serving::start(command)
}

/// `morphogen serve` with `options` and the environment variables `env`.
pub fn serve_with_env(options: &[&str], env: &[(&str, &str)]) -> Serving {
    let mut command = Command::new(env!("CARGO_BIN_EXE_morphogen"));
    command.args(["serve", "--listen", "127.0.0.1:0"]).args(options).envs(env.iter().copied());
    Serving::start(command)
}

/// `morphogen serve` with `options`, unable to grow any file past
/// `max_kib` KiB: a disk that fills up. SIGXFSZ is ignored, so that a
/// write past the limit fails (EFBIG) instead of killing the server.
pub fn serve_with_file_limit(options: &[&str], max_kib: u64) -> Serving {
    let mut command = Command::new("bash");
    let limited = "trap '' XFSZ; ulimit -f \"$1\"; shift; exec \"$@\"";
    command.args(["-c", limited, "bash", &max_kib.to_string(), env!("CARGO_BIN_EXE_morphogen")]);
    command.args(["serve", "--listen", "127.0.0.1:0"]).args(options);
    Serving::start(command)
}

/// `morphogen eth rpc` on a loopback port, over the servers `a` and `b`.
pub fn eth_rpc(a: &str, b: &str) -> Serving {
    let mut command = Command::new(env!("CARGO_BIN_EXE_morphogen"));
    command.args(["eth", "rpc", "--server", a, "--server", b, "--listen", "127.0.0.1:0"]);
    Serving::start_until(command, "answering JSON-RPC address=")
}

impl Serving {
    /// Starts `command`, a server, and waits for its address.
    fn start(command: Command) -> Serving {
        Serving::start_until(command, "serving address=")
    }

    /// Starts `command` and waits, at most [`STARTUP_LIMIT`], for the log
    /// line that ends in `marker` and the address it listens on.
    pub fn start_until(mut command: Command, marker: &str) -> Serving {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        // A thread reads the whole log, so the server never blocks on a full
        // pipe, and passes each line on until the address is found.
        let (lines, received) = std::sync::mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push_str(&(line.clone() + "\n"));
                let _ = lines.send(line);
            }
        });
        let deadline = std::time::Instant::now() + STARTUP_LIMIT;
        let address = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match received.recv_timeout(left) {
                Ok(line) => {
                    if let Some((_, address)) = line.split_once(marker) {
                        break address.trim().to_string();
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the server exited before it served:\n{}", log.lock().unwrap())
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!("no `{marker}` line within {STARTUP_LIMIT:?}:\n{}", log.lock().unwrap())
                }
            }
        };
        Serving { child, url: format!("http://{address}"), log }
    }
}
