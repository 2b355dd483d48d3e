//! Configuration precedence through the real binary: file < environment < flag, defaults
//! for the rest, and invalid values rejected at start with the key named.

use std::process::Command;

fn switchboard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD_") || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    c
}

fn value(toml_text: &str, key: &str) -> String {
    let table: toml::Table = toml::from_str(toml_text).unwrap();
    table[key].to_string()
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    std::fs::write(
        &file,
        "max_channels_per_connection = 5\nmax_joins_per_second = 5\noutbox_frames = 5\n",
    )
    .unwrap();
    let out = switchboard()
        .arg("--config")
        .arg(&file)
        .args(["--max-joins-per-second", "7", "config"])
        .env("SWITCHBOARD_MAX_CHANNELS_PER_CONNECTION", "6")
        .env("SWITCHBOARD_MAX_JOINS_PER_SECOND", "6")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(value(&text, "max_joins_per_second"), "7", "flag wins");
    assert_eq!(
        value(&text, "max_channels_per_connection"),
        "6",
        "env beats file"
    );
    assert_eq!(value(&text, "outbox_frames"), "5", "file beats default");
    assert_eq!(value(&text, "max_broadcast_bytes"), "262144", "default");
}

#[test]
fn invalid_values_fail_at_start_naming_the_key() {
    let out = switchboard()
        .args(["serve"])
        .env("SWITCHBOARD_LISTEN", "not-an-address")
        .env("SWITCHBOARD_JWT_SECRET", "s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`listen`"), "{err}");

    let out = switchboard()
        .args(["serve"])
        .env("SWITCHBOARD_OUTBOX_BYTES", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`outbox_bytes`"));
}

#[test]
fn unknown_key_in_the_file_is_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    std::fs::write(&file, "max_chanels_per_connection = 5\n").unwrap();
    let out = switchboard()
        .arg("--config")
        .arg(&file)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_chanels_per_connection"), "{err}");
}

#[test]
fn a_flag_value_of_the_wrong_type_is_rejected_by_name() {
    let out = switchboard()
        .args(["--max-connections", "lots", "config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-connections"));
}

/// `token` takes its role from `--role`, else from `--claims`, else `authenticated`.
#[test]
fn token_takes_the_role_from_the_flag_then_the_claims_then_authenticated() {
    let role_of = |args: &[&str]| {
        let out = switchboard()
            .env(
                "SWITCHBOARD_JWT_SECRET",
                "a-secret-long-enough-for-hs256-tokens",
            )
            .arg("token")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let token = String::from_utf8(out.stdout).unwrap();
        let payload = token.trim().split('.').nth(1).unwrap().to_owned();
        use base64::Engine;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
        claims["role"].as_str().unwrap().to_owned()
    };
    assert_eq!(role_of(&[]), "authenticated");
    assert_eq!(role_of(&["--claims", r#"{"role":"anon","a":1}"#]), "anon");
    assert_eq!(
        role_of(&["--role", "service_role", "--claims", r#"{"role":"anon"}"#]),
        "service_role"
    );
}

/// Settings flags may come after the subcommand too (`switchboard serve --listen …`).
#[test]
fn a_setting_flag_after_the_subcommand_is_read() {
    let out = switchboard()
        .args(["config", "--max-connections", "7"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(value(&text, "max_connections"), "7", "{text}");
}

#[test]
fn a_bad_value_from_the_environment_is_named_by_its_variable() {
    let out = switchboard()
        .args(["config"])
        .env("SWITCHBOARD_CAPTURE_POLL_MS", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: SWITCHBOARD_CAPTURE_POLL_MS: invalid value 'soon'"),
        "{err}"
    );
    // Given as a flag, it is named by the flag (clap's own text).
    let out = switchboard()
        .args(["--capture-poll-ms", "soon", "config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: invalid value 'soon' for '--capture-poll-ms"),
        "{err}"
    );
}

#[test]
fn config_shows_the_declared_webhooks_with_their_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    std::fs::write(
        &file,
        "[[webhooks]]\nname = \"crm\"\nurl = \"https://crm.example/hook\"\n\
         tables = [\"public.jobs\"]\nsecret = \"whsec_c2VjcmV0c2VjcmV0c2VjcmV0\"\n",
    )
    .unwrap();
    let out = switchboard()
        .arg("--config")
        .arg(&file)
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let hooks = table["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["url"].as_str(), Some("https://crm.example/hook"));
    assert_eq!(hooks[0]["secret"].as_str(), Some("<redacted>"));
    assert!(!text.contains("c2VjcmV0"));
}
