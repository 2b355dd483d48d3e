//! A real webhook receiver for tests: a plain HTTP/1.1 server on 127.0.0.1:<ephemeral>
//! (written on raw sockets so it can misbehave the way real receivers do) that records
//! every request it reads and answers as its mode says: 200, a 500, a late 200 (after the
//! hub's timeout), or a connection reset. `Mode::Chaos` picks among them at random.
//!
//! A request counts as *processed* when the receiver accepted its body (a 200, even a
//! late one, as a real receiver that finished its work but answered too late); the hub
//! must deliver every change at least once among processed requests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// 200 at once.
    Ok,
    /// 500 every time.
    Fail,
    /// At random: 500 (`p500`), a 200 after `slow` (`pslow`), a reset (`preset`), else 200.
    Chaos {
        p500: f64,
        pslow: f64,
        preset: f64,
        slow: Duration,
    },
}

/// How one request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    LateOk,
    Error,
    Reset,
}

/// One request as read.
#[derive(Debug, Clone)]
pub struct Request {
    /// Lower-cased header names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub answer: Answer,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body's events.
    pub fn events(&self) -> Vec<Value> {
        match serde_json::from_slice(&self.body) {
            Ok(Value::Array(a)) => a,
            other => panic!("webhook body is not a JSON array: {other:?}"),
        }
    }

    pub fn processed(&self) -> bool {
        matches!(self.answer, Answer::Ok | Answer::LateOk)
    }
}

pub struct Receiver {
    pub url: String,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Bumped on every request; `wait_until` watches it.
    seen: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(mode));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (seen_tx, seen) = watch::channel(0usize);
        let seen_tx = Arc::new(seen_tx);
        let (m, r) = (mode.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, m.clone(), r.clone(), seen_tx.clone()));
            }
        });
        Receiver {
            url,
            mode,
            requests,
            seen,
            task,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Every request read so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// The events of processed requests, in arrival order (retries included).
    pub fn processed_events(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.processed())
            .flat_map(Request::events)
            .collect()
    }

    /// Waits until `done(requests)` holds; fails the test after `within`.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        done: impl FnMut(&[Request]) -> bool,
    ) {
        if !self.wait_for(within, done).await {
            let n = self.requests().len();
            panic!("receiver: {what} not within {within:?} ({n} requests so far)");
        }
    }

    /// Waits until requests carry at least `n` events, processed or not (retries
    /// counted).
    pub async fn wait_received(&self, within: Duration, n: usize) {
        let what = format!("{n} events");
        self.wait_until(within, &what, |r| {
            r.iter().map(|r| r.events().len()).sum::<usize>() >= n
        })
        .await
    }

    /// Waits until processed requests carry at least `n` events (retries counted).
    pub async fn wait_processed(&self, within: Duration, n: usize) {
        let what = format!("{n} events processed");
        self.wait_until(within, &what, |r| {
            r.iter()
                .filter(|r| r.processed())
                .map(|r| r.events().len())
                .sum::<usize>()
                >= n
        })
        .await
    }

    /// Waits until a request arrives for which `hit` holds (each request is looked at
    /// once, so long runs stay cheap); false after `within`.
    pub async fn wait_for_request(
        &self,
        within: Duration,
        mut hit: impl FnMut(&Request) -> bool,
    ) -> bool {
        let mut seen = self.seen.clone();
        let deadline = tokio::time::Instant::now() + within;
        let mut checked = 0;
        loop {
            seen.borrow_and_update();
            let new: Vec<Request> = self.requests.lock().unwrap()[checked..].to_vec();
            checked += new.len();
            if new.iter().any(&mut hit) {
                return true;
            }
            if tokio::time::timeout_at(deadline, seen.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Waits until `done(requests)` holds; false after `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        mut done: impl FnMut(&[Request]) -> bool,
    ) -> bool {
        let mut seen = self.seen.clone();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            seen.borrow_and_update();
            if done(&self.requests()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, seen.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    stream: TcpStream,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<Mutex<Vec<Request>>>,
    seen: Arc<watch::Sender<usize>>,
) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut headers = Vec::new();
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            line.clear();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let mode = *mode.lock().unwrap();
        let answer = match mode {
            Mode::Ok => Answer::Ok,
            Mode::Fail => Answer::Error,
            Mode::Chaos {
                p500,
                pslow,
                preset,
                ..
            } => {
                let roll: f64 = rand::rng().random();
                if roll < p500 {
                    Answer::Error
                } else if roll < p500 + pslow {
                    Answer::LateOk
                } else if roll < p500 + pslow + preset {
                    Answer::Reset
                } else {
                    Answer::Ok
                }
            }
        };
        requests.lock().unwrap().push(Request {
            headers,
            body,
            answer,
        });
        seen.send_modify(|n| *n += 1);
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        match answer {
            Answer::Ok => {
                if stream.get_mut().write_all(ok.as_bytes()).await.is_err() {
                    return;
                }
            }
            Answer::Error => {
                let resp = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nboom";
                if stream.get_mut().write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            Answer::LateOk => {
                if let Mode::Chaos { slow, .. } = mode {
                    tokio::time::sleep(slow).await;
                }
                let _ = stream.get_mut().write_all(ok.as_bytes()).await;
                return;
            }
            Answer::Reset => {
                let _ = stream.get_ref().set_zero_linger();
                return;
            }
        }
    }
}

/// Checks every request's signature with the `standardwebhooks` npm package (run by
/// tests/clients/node/scripts/verify_webhooks.mjs); fails the test unless all verify.
/// Installs the node test dependencies first when they are missing.
pub fn verify_signatures(requests: &[Request], secret: &str) {
    let node_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node");
    ensure_standardwebhooks(&node_dir);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("requests.jsonl");
    let mut lines = String::new();
    for r in requests {
        let headers: serde_json::Map<String, Value> = r
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("webhook-"))
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let body = String::from_utf8(r.body.clone()).expect("utf-8 body");
        lines.push_str(&serde_json::json!({ "headers": headers, "body": body }).to_string());
        lines.push('\n');
    }
    std::fs::write(&file, lines).expect("write requests");
    let out = std::process::Command::new("node")
        .arg(node_dir.join("scripts/verify_webhooks.mjs"))
        .arg(&file)
        .arg(secret)
        .current_dir(&node_dir)
        .output()
        .expect("run node (install Node.js 20+; .ci/run does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "standardwebhooks verification failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!(
            "verified {} of {}",
            requests.len(),
            requests.len()
        )),
        "{stdout}"
    );
}

/// `npm ci` in tests/clients/node unless `standardwebhooks` is installed.
fn ensure_standardwebhooks(dir: &std::path::Path) {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        if dir
            .join("node_modules/standardwebhooks/package.json")
            .exists()
        {
            return;
        }
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .output()
            .expect("run npm (install Node.js and npm; .ci/run does)");
        assert!(
            out.status.success(),
            "npm ci in tests/clients/node failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}
