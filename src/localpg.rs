//! A local Postgres cluster from the installed server binaries: find them, initdb, and
//! start or stop with pg_ctl, as the `postgres` user when we are root (initdb and
//! postgres refuse root). Shared by `switchboard dev`, the benchmarks and the test
//! harness; what a cluster is for (kept, throwaway, watched) is theirs to decide.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "Postgres server binaries (initdb, postgres) not found. Install them, e.g.\n  \
         Debian/Ubuntu: sudo apt-get install postgresql\n  \
         macOS: brew install postgresql@16"
    )]
    NotFound,
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where the server binaries are: `hint` if given, else the newest
/// `/usr/lib/postgresql/<v>/bin` (Debian/Ubuntu), else `PATH`, else Homebrew's.
pub fn find_bin(hint: Option<&Path>) -> Result<PathBuf, LocalPgError> {
    let mut candidates: Vec<PathBuf> = hint.into_iter().map(Path::to_path_buf).collect();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.extend(debian.into_iter().rev());
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates.push("/opt/homebrew/bin".into());
    candidates.push("/usr/local/bin".into());
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .ok_or(LocalPgError::NotFound)
}

/// Are we root (so Postgres must run as the `postgres` user)?
pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for one of the server binaries, run as `postgres` when `as_postgres`.
pub fn command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<(), LocalPgError> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LocalPgError::Failed {
            command: format!("{cmd:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Makes `dir` (recursively) the `postgres` user's.
pub fn give_to_postgres(dir: &Path) -> Result<(), LocalPgError> {
    run(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir))
}

/// Creates a cluster in `data` with trust auth for user `postgres`. `throwaway` skips
/// fsync and uses the C locale (tests and benchmarks).
pub fn initdb(
    bin: &Path,
    data: &Path,
    as_postgres: bool,
    throwaway: bool,
) -> Result<(), LocalPgError> {
    let mut cmd = command(bin, "initdb", as_postgres);
    cmd.args(["-A", "trust", "-U", "postgres", "-E", "UTF8"]);
    if throwaway {
        cmd.args(["--locale=C", "--no-sync"]);
    }
    run(cmd.arg("-D").arg(data))
}

/// `pg_ctl -D data <args>`; stdout is discarded.
pub fn pg_ctl(
    bin: &Path,
    data: &Path,
    as_postgres: bool,
    args: &[&str],
) -> Result<(), LocalPgError> {
    run(command(bin, "pg_ctl", as_postgres)
        .arg("-D")
        .arg(data)
        .args(args)
        .stdout(Stdio::null()))
}

/// Server options for a loopback-only cluster on `port` with its socket in `socket_dir`;
/// `throwaway` trades durability for speed.
pub fn server_options(
    port: u16,
    socket_dir: &Path,
    throwaway: bool,
    max_connections: u32,
) -> String {
    let mut opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections={max_connections}",
        socket_dir.display()
    );
    if throwaway {
        opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
    }
    opts
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
