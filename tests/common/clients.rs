//! The real client libraries' environments under tests/clients: node_modules for
//! realtime-js / supabase-js (and playwright-core), and the Python venv with `realtime`.
//! Each is installed once per test binary when missing or out of date; a missing `node`,
//! `npm` or `python3` fails the test, never skips it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Fails the test unless `program --version` runs.
pub fn require_tool(program: &str, hint: &str) {
    match Command::new(program).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{program} --version` failed ({}): {hint}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("`{program}` is not available ({e}): {hint}"),
    }
}

fn run_setup(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `npm ci` in tests/clients/node unless node_modules was installed from the current
/// package-lock.json (a marker holds the lockfile it was installed from).
pub fn ensure_node_modules() -> PathBuf {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = clients_dir().join("node");
    let result = DONE.get_or_init(|| {
        require_tool("node", "install Node.js 20 or newer (.ci/run does this)");
        require_tool("npm", "install npm (.ci/run does this)");
        let lock = std::fs::read_to_string(dir.join("package-lock.json"))
            .map_err(|e| format!("read package-lock.json: {e}"))?;
        let marker = dir.join("node_modules/.switchboard-installed");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(lock.as_str()) {
            return Ok(());
        }
        let mut cmd = Command::new("npm");
        cmd.current_dir(&dir)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
        run_setup(cmd, "npm ci in tests/clients/node")?;
        std::fs::write(&marker, lock).map_err(|e| format!("write marker: {e}"))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    dir
}

/// Creates tests/clients/python/.venv and installs requirements.txt unless done (a
/// marker holds the requirements it was installed from); returns its python.
pub fn ensure_python_venv() -> PathBuf {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = clients_dir().join("python");
    let venv = dir.join(".venv");
    let python = venv.join("bin/python");
    let result = DONE.get_or_init(|| {
        require_tool(
            "python3",
            "install Python 3.10+ with venv (.ci/run does this)",
        );
        let requirements = std::fs::read_to_string(dir.join("requirements.txt"))
            .map_err(|e| format!("read requirements.txt: {e}"))?;
        let marker = venv.join(".installed-requirements");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(requirements.as_str()) {
            return Ok(());
        }
        if !python.exists() {
            let mut cmd = Command::new("python3");
            cmd.current_dir(&dir).args(["-m", "venv", ".venv"]);
            run_setup(cmd, "python3 -m venv tests/clients/python/.venv")?;
        }
        let mut cmd = Command::new(&python);
        cmd.current_dir(&dir).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
            "requirements.txt",
        ]);
        run_setup(cmd, "pip install -r tests/clients/python/requirements.txt")?;
        std::fs::write(&marker, requirements).map_err(|e| format!("write marker: {e}"))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    python
}
