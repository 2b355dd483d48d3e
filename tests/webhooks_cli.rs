//! `switchboard webhooks` through the real binary against a real database: list shows
//! state and lag, pause and resume change the state, replay moves the cursor back to a
//! time (never one in the future), secret prints the signing secret, and mistakes are
//! named.

mod common;

use std::process::{Command, Output};

fn switchboard(url: &str, args: &[&str]) -> Output {
    let mut all = vec!["webhooks"];
    all.extend_from_slice(args);
    switchboard_cmd(url, &all)
}

/// `switchboard <args>` on the database at `url`, with no other setting from the
/// environment.
fn switchboard_cmd(url: &str, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD_") || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    c.env("DATABASE_URL", url)
        .env("RUST_BACKTRACE", "0")
        .args(args)
        .output()
        .expect("run switchboard")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn operators_list_pause_resume_replay_and_read_the_secret() {
    let db = common::pg::test_db().await;
    let sql = db.client().await;
    switchboard::db::migrate(&sql).await.unwrap();
    sql.batch_execute(
        "create table leads (id bigint primary key, email text);
         select realtime.enable('public.leads');
         insert into leads values (0, 'before@example.com');",
    )
    .await
    .unwrap();
    let secret: String = sql
        .query_one(
            "select realtime.create_webhook('crm', 'https://crm.example/hook', '{public.leads}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    sql.batch_execute("insert into leads values (1, 'a@example.com'), (2, 'b@example.com')")
        .await
        .unwrap();

    let url = db.url.clone();
    let run = move |args: &[&str]| switchboard(&url, args);
    let list = ok(run(&["list"]));
    assert!(
        list.contains("crm  [active]  https://crm.example/hook  public.leads"),
        "{list}"
    );
    assert!(list.contains("lag 2 events"), "{list}");
    let json: serde_json::Value = serde_json::from_str(&ok(run(&["list", "--json"]))).unwrap();
    assert_eq!(json[0]["lag_events"], 2, "{json}");

    assert!(ok(run(&["pause", "crm"])).contains("[paused]"));
    assert!(ok(run(&["resume", "crm"])).contains("[active]"));
    assert_eq!(ok(run(&["secret", "crm"])).trim(), secret);

    let replay = ok(run(&["replay", "crm", "--from", "2000-01-01T00:00:00Z"]));
    assert!(replay.contains("replaying from position"), "{replay}");
    assert!(
        replay.contains("lag 3 events"),
        "a replay from long ago covers the whole log: {replay}"
    );

    let out = run(&["pause", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no webhook named \"nope\""));
    let out = run(&["replay", "crm", "--from", "yesterday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a time like"));
    let out = run(&["replay", "crm", "--from", "2099-01-01T00:00:00Z"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("replay from must not be in the future"),
        "{stderr}"
    );
    let list = ok(run(&["list"]));
    assert!(
        list.contains("lag 3 events"),
        "a refused replay changes nothing: {list}"
    );
}

/// On a database the hub has not set up, every command says to migrate first.
#[tokio::test]
async fn on_a_database_not_migrated_yet_the_commands_say_to_migrate() {
    let db = common::pg::test_db().await;
    for args in [&["list"][..], &["list", "--json"], &["pause", "crm"]] {
        let out = switchboard(&db.url, args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("run `switchboard migrate`"), "{args:?}: {err}");
    }
}

/// `switchboard disable` of a table a webhook endpoint delivers says it stays enabled, and
/// why, instead of reporting it disabled (`realtime.disable` says so only in a NOTICE).
#[tokio::test]
async fn disable_says_when_a_table_stays_enabled_for_a_webhook() {
    let db = common::pg::test_db().await;
    let sql = db.client().await;
    switchboard::db::migrate(&sql).await.unwrap();
    sql.batch_execute(
        "create table leads (id bigint primary key);
         create table notes (id bigint primary key);
         select realtime.enable('public.notes');
         select realtime.create_webhook('crm', 'https://crm.example/hook', '{public.leads}');",
    )
    .await
    .unwrap();
    assert_eq!(
        ok(switchboard_cmd(&db.url, &["disable", "public.leads"])),
        "realtime stays enabled for public.leads: webhook endpoint crm delivers its changes \
         (drop the endpoint or alter its tables first)\n"
    );
    assert_eq!(
        ok(switchboard_cmd(&db.url, &["disable", "public.notes"])),
        "realtime disabled for public.notes\n"
    );
    let enabled: Vec<String> = sql
        .query("select table_name from realtime.enabled_tables", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(enabled, ["leads"]);
}
