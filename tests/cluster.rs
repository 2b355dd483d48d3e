//! Several hub nodes over Redis, end to end with real parts: `switchboard serve`
//! processes, a real `redis-server`, Postgres from the harness, realtime-js clients.
//! Clients on different nodes see each other's broadcasts and presence; a killed node's
//! members leave everywhere else within the node timeout; a Redis outage keeps local
//! traffic going and converges afterwards; a row change reaches every node's subscribers
//! exactly once; a client parked on one node resumes on another; a node starting is
//! ready only once it holds the others' presences.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{synced_peers, TestCluster};
use common::hub::{Frame, WsClient, SECRET};
use serde_json::json;

/// Presence keys of a `presence_diff`'s `side` ("joins" or "leaves").
fn diff_keys(f: &Frame, side: &str) -> Vec<String> {
    let mut k: Vec<String> = f.payload()[side]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// Keys of a `presence_state` payload.
fn state_keys(f: &Frame) -> Vec<String> {
    let mut k: Vec<String> = f.payload().as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

/// Follows `presence_diff`s from `state` (keys) until the keys are exactly `want`.
async fn wait_keys(c: &mut WsClient, state: Vec<String>, want: &[&str]) {
    let mut keys: std::collections::BTreeSet<String> = state.into_iter().collect();
    while keys.iter().map(String::as_str).collect::<Vec<_>>() != want {
        let f = c.recv_until(|f| f.is_event("presence_diff")).await;
        keys.extend(diff_keys(&f, "joins"));
        for k in diff_keys(&f, "leaves") {
            keys.remove(&k);
        }
    }
}

fn is_diff_with(side: &'static str, key: &'static str) -> impl Fn(&Frame) -> bool {
    move |f: &Frame| f.is_event("presence_diff") && f.payload()[side].get(key).is_some()
}

/// Joins `topic` with presence under `key` (and broadcast acks) and returns the join ref
/// and the keys of its first `presence_state`.
async fn join_presence(c: &mut WsClient, topic: &str, key: &str) -> (String, Vec<String>) {
    let config = json!({"presence": {"key": key, "enabled": true}, "broadcast": {"ack": true}});
    let join_ref = c.join_ok(topic, config).await;
    let state = c.recv_until(|f| f.is_event("presence_state")).await;
    (join_ref, state_keys(&state))
}

/// Tracks `{"who": key}` on a joined channel; returns once the client has its own join.
async fn track(c: &mut WsClient, join_ref: &str, topic: &str, key: &'static str) {
    let r = c
        .presence(join_ref, topic, "track", json!({"who": key}))
        .await;
    c.recv_until(|f| f.is_reply_to(&r)).await;
    c.recv_until(is_diff_with("joins", key)).await;
}

/// [`join_presence`], then [`track`]; returns the join ref.
async fn join_and_track(c: &mut WsClient, topic: &str, key: &'static str) -> String {
    let (join_ref, _) = join_presence(c, topic, key).await;
    track(c, &join_ref, topic, key).await;
    join_ref
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_clients_on_different_nodes_see_broadcasts_acks_and_presence() {
    let cluster = TestCluster::start(3, 10, None).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.realtime_url()).collect();
    common::node_suite::run_node_file(
        "cluster.test.mjs",
        &[
            ("SWITCHBOARD_URL", urls[0].clone()),
            ("SWITCHBOARD_NODE_URLS", urls.join(",")),
            ("SWITCHBOARD_JWT_SECRET", SECRET.to_owned()),
        ],
    )
    .await;
}

/// The node timeout of the kill test, in seconds.
const KILL_TIMEOUT_SECS: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_leave_on_every_other_node_within_the_node_timeout() {
    let mut cluster = TestCluster::start(3, KILL_TIMEOUT_SECS, None).await;
    let topic = "realtime:kill";
    let mut a = cluster.nodes[0].client().await;
    let mut b = cluster.nodes[1].client().await;
    let mut c = cluster.nodes[2].client().await;
    let mut c2 = cluster.nodes[2].client().await;
    join_and_track(&mut a, topic, "a").await;
    join_and_track(&mut b, topic, "b").await;
    let (c_ref, state) = join_presence(&mut c, topic, "c").await;
    // Once node 2 has a's and b's presences, a joiner there gets them in its first state.
    wait_keys(&mut c, state, &["a", "b"]).await;
    track(&mut c, &c_ref, topic, "c").await;
    let (c2_ref, state) = join_presence(&mut c2, topic, "c2").await;
    assert_eq!(state, ["a", "b", "c"], "c2's first presence_state");
    track(&mut c2, &c2_ref, topic, "c2").await;
    for (who, client) in [("a", &mut a), ("b", &mut b)] {
        for key in ["c", "c2"] {
            let f = client.recv_until(is_diff_with("joins", key)).await;
            assert_eq!(diff_keys(&f, "joins"), [key], "{who}: {f:?}");
        }
    }

    let killed = Instant::now();
    cluster.nodes[2].kill9();
    let bound = Duration::from_secs(KILL_TIMEOUT_SECS);
    for (who, client) in [("a", &mut a), ("b", &mut b)] {
        let f = client
            .recv_until(|f| f.is_event("presence_diff") && !diff_keys(f, "leaves").is_empty())
            .await;
        let elapsed = killed.elapsed();
        // One diff with both leaves, and nothing else left.
        assert_eq!(diff_keys(&f, "leaves"), ["c", "c2"], "{who}: {f:?}");
        assert!(diff_keys(&f, "joins").is_empty(), "{who}: {f:?}");
        println!("{who}: leaves of the killed node's members after {elapsed:?}");
        assert!(
            elapsed <= bound + Duration::from_millis(500),
            "{who}: leaves came {elapsed:?} after kill -9, bound {bound:?}"
        );
    }
    // Once both survivors have dropped the dead peer, nothing more may come.
    for node in &cluster.nodes[..2] {
        node.wait_cluster("down to one peer", |s| {
            s["peers"].as_array().map(Vec::len) == Some(1)
        })
        .await;
    }
    a.assert_quiet().await;
    b.assert_quiet().await;

    // A joiner after the death sees only the living.
    let mut late = cluster.nodes[1].client().await;
    let (_, state) = join_presence(&mut late, topic, "late").await;
    assert_eq!(state, ["a", "b"]);
}

/// Topics the start-up test tracks a member in (a connection may join 100).
const STARTUP_TOPICS: usize = 90;

/// A node that has just started is ready (`/ready`) only once it holds the other nodes'
/// presences: a client joining there at once gets everyone in its first `presence_state`,
/// as a load balancer sending reconnects to a restarted node needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_ready_only_once_it_holds_the_other_nodes_presences() {
    let mut cluster = TestCluster::start(1, 10, None).await;
    let mut a = cluster.nodes[0].client().await;
    let topics: Vec<String> = (0..STARTUP_TOPICS)
        .map(|i| format!("realtime:startup-{i}"))
        .collect();
    for topic in &topics {
        join_and_track(&mut a, topic, "a").await;
    }
    // The new node reaches Redis only after a while (a slow network, a busy Redis), so
    // that a /ready that does not wait for the other nodes' presences would answer first.
    // Node::start returns as soon as /ready answers 200.
    let slow = slow_proxy(&cluster.spec.redis_url, Duration::from_millis(700)).await;
    let spec = common::cluster::NodeSpec {
        redis_url: slow,
        ..cluster.spec.clone()
    };
    cluster
        .nodes
        .push(common::cluster::Node::start("late", &spec).await);
    let s = cluster.nodes[1].cluster_status().await;
    assert_eq!(
        synced_peers(&s),
        1,
        "ready before the other node's presences: {s}"
    );
    let mut late = cluster.nodes[1].client().await;
    for topic in &topics {
        let (_, state) = join_presence(&mut late, topic, "late").await;
        assert_eq!(
            state,
            ["a"],
            "{topic}: the first presence_state on the new node"
        );
    }
}

/// A TCP proxy to `redis_url`'s address that waits `delay` before connecting each
/// connection through; returns the URL to use instead.
async fn slow_proxy(redis_url: &str, delay: Duration) -> String {
    let upstream = redis_url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    format!("redis://{addr}")
}

/// How long the outage test keeps Redis down.
const OUTAGE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_local_traffic_and_cross_node_traffic_and_presence_converge_after() {
    let mut cluster = TestCluster::start(2, 10, None).await;
    let topic = "realtime:outage";
    let mut a1 = cluster.nodes[0].client().await;
    let mut a2 = cluster.nodes[0].client().await;
    let mut b1 = cluster.nodes[1].client().await;
    let (b1_ref, _) = join_presence(&mut b1, topic, "b1").await;
    let a1_ref = join_and_track(&mut a1, topic, "a1").await;
    let (a2_ref, _) = join_presence(&mut a2, topic, "a2").await;
    b1.recv_until(is_diff_with("joins", "a1")).await;
    track(&mut b1, &b1_ref, topic, "b1").await;
    a1.recv_until(is_diff_with("joins", "b1")).await;
    a2.recv_until(is_diff_with("joins", "b1")).await;

    cluster.redis.stop();
    let stopped = Instant::now();
    for node in &cluster.nodes {
        node.wait_cluster("degraded", |s| s["state"] == "degraded")
            .await;
    }
    let (_, metrics) = get(cluster.nodes[0].addr, "/metrics").await;
    assert!(
        metrics.contains("switchboard_cluster_degraded 1"),
        "/metrics says degraded"
    );

    // Local traffic continues: a broadcast with ack, and presence, within node 0.
    let r = a1
        .broadcast(&a1_ref, topic, "during", json!({"n": 1}))
        .await;
    a1.recv_until(|f| f.is_reply_to(&r)).await;
    let f = a2.recv_until(|f| f.is_event("broadcast")).await;
    assert_eq!(f.payload()["event"], "during");
    track(&mut a2, &a2_ref, topic, "a2").await;
    a1.recv_until(is_diff_with("joins", "a2")).await;
    // ...and on node 1: b1 leaves presence while the nodes cannot talk.
    let r = b1.presence(&b1_ref, topic, "untrack", json!({})).await;
    b1.recv_until(|f| f.is_reply_to(&r)).await;
    b1.recv_until(is_diff_with("leaves", "b1")).await;

    let left = OUTAGE.saturating_sub(stopped.elapsed());
    tokio::time::sleep(left).await; // the outage itself, not a wait for an event
    let r = a1.broadcast(&a1_ref, topic, "late", json!({})).await;
    a1.recv_until(|f| f.is_reply_to(&r)).await;
    assert_eq!(
        a2.recv_until(|f| f.is_event("broadcast")).await.payload()["event"],
        "late",
        "local broadcast at the end of the outage"
    );
    cluster.redis.restart();
    cluster.wait_all_synced(1).await;

    // Presence converges: each side learns what changed while they were apart, once.
    b1.recv_until(is_diff_with("joins", "a2")).await;
    for c in [&mut a1, &mut a2] {
        c.recv_until(is_diff_with("leaves", "b1")).await;
    }
    let mut states = Vec::new();
    for node in &cluster.nodes {
        let mut fresh = node.client().await;
        states.push(join_presence(&mut fresh, topic, "fresh").await.1);
    }
    assert_eq!(states, [vec!["a1", "a2"], vec!["a1", "a2"]]);

    // Cross-node broadcast resumes; what was sent during the outage never arrives.
    let r = a1.broadcast(&a1_ref, topic, "after", json!({})).await;
    a1.recv_until(|f| f.is_reply_to(&r)).await;
    let f = b1.recv_until(|f| f.is_event("broadcast")).await;
    assert_eq!(f.payload()["event"], "after", "{f:?}");
    let r = b1.broadcast(&b1_ref, topic, "back", json!({})).await;
    b1.recv_until(|f| f.is_reply_to(&r)).await;
    let f = a1.recv_until(|f| f.is_event("broadcast")).await;
    assert_eq!(f.payload()["event"], "back", "{f:?}");

    let s = cluster.nodes[0].cluster_status().await;
    assert_eq!(s["reconnects"], 1, "{s}");
    assert_eq!(synced_peers(&s), 1, "{s}");
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("GET");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_change_and_a_database_broadcast_reach_every_nodes_subscribers_exactly_once() {
    let db = common::pg::test_db().await;
    let sql = db.client().await;
    switchboard::db::migrate(&sql).await.expect("migrations");
    sql.batch_execute(
        "create table public.notes (id bigint primary key, body text);
         grant select on public.notes to anon;
         select realtime.enable('public.notes');",
    )
    .await
    .expect("setup");
    let cluster = TestCluster::start(3, 10, Some(db.url.clone())).await;
    let topic = "realtime:room";
    let mut clients = Vec::new();
    let mut join_refs = Vec::new();
    for node in &cluster.nodes {
        let mut c = node.client().await;
        wait_capture(node).await;
        let joined = common::e2e::subscribe(
            &mut c,
            topic,
            json!([{"event": "INSERT", "schema": "public", "table": "notes"}]),
            None,
        )
        .await;
        clients.push(c);
        join_refs.push(joined.join_ref);
    }

    sql.batch_execute(
        "insert into notes values (1, 'one');
         select realtime.send('{\"db\":true}'::jsonb, 'from-db', 'room', false);",
    )
    .await
    .expect("writes");
    sql.batch_execute("insert into notes values (2, 'two')")
        .await
        .expect("write");
    for c in &mut clients {
        common::e2e::expect_row(c, "INSERT", "notes", 1).await;
        let f = c.recv().await;
        assert_eq!(
            (f.event(), &f.payload()["event"]),
            (Some("broadcast"), &json!("from-db")),
            "{f:?}"
        );
        common::e2e::expect_row(c, "INSERT", "notes", 2).await;
    }
    // Each client now broadcasts a marker. Anything a node had forwarded through Redis
    // would reach the others before its marker (Redis keeps a publisher's order), so the
    // next frames must be exactly the other two markers.
    for (i, c) in clients.iter_mut().enumerate() {
        c.broadcast(&join_refs[i], topic, &format!("marker{i}"), json!({}))
            .await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < 2 {
            let f = c.recv().await;
            assert!(f.is_event("broadcast"), "client {i}: unexpected {f:?}");
            got.push(f.payload()["event"].as_str().unwrap_or_default().to_owned());
        }
        got.sort();
        let others: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("marker{j}"))
            .collect();
        assert_eq!(got, others, "client {i}");
        c.assert_quiet().await;
    }
}

/// Waits until the node's change listener is connected.
async fn wait_capture(node: &common::cluster::Node) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = node.status().await;
        if s["capture"]["connected"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "capture not connected: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_parked_on_one_node_resumes_on_another_with_what_it_missed() {
    let db = common::pg::test_db().await;
    let sql = db.client().await;
    switchboard::db::migrate(&sql).await.expect("migrations");
    sql.batch_execute(
        "create table public.notes (id bigint primary key, body text);
         grant select on public.notes to anon;
         select realtime.enable('public.notes');",
    )
    .await
    .expect("setup");
    let cluster = TestCluster::start(2, 10, Some(db.url.clone())).await;
    let entries = json!([{"event": "INSERT", "schema": "public", "table": "notes"}]);
    let resumable =
        |node: &common::cluster::Node| format!("{}&resume=laptop-1", node.ws_url("2.0.0"));
    let mut observer = cluster.nodes[1].client().await;
    wait_capture(&cluster.nodes[1]).await;
    common::e2e::subscribe(&mut observer, "realtime:watch", entries.clone(), None).await;

    wait_capture(&cluster.nodes[0]).await;
    let mut c = WsClient::connect(&resumable(&cluster.nodes[0])).await;
    common::e2e::subscribe(&mut c, "realtime:notes", entries.clone(), None).await;
    let first = common::e2e::next_system(&mut c).await;
    assert_eq!(first["recovered"], false, "{first}");
    sql.batch_execute("insert into notes values (1, 'seen')")
        .await
        .unwrap();
    common::e2e::expect_row(&mut c, "INSERT", "notes", 1).await;
    common::e2e::expect_row(&mut observer, "INSERT", "notes", 1).await;
    // The pong to the hub's next ping acknowledges row 1.
    c.acknowledge().await;
    drop(c);
    common::e2e::wait_parked(&sql, 1).await;

    sql.batch_execute(
        "insert into notes values (2, 'missed'); insert into notes values (3, 'missed too');",
    )
    .await
    .unwrap();
    common::e2e::expect_row(&mut observer, "INSERT", "notes", 2).await;
    common::e2e::expect_row(&mut observer, "INSERT", "notes", 3).await;

    // The load balancer sends the client back to the other node.
    let mut c = WsClient::connect(&resumable(&cluster.nodes[1])).await;
    common::e2e::subscribe(&mut c, "realtime:notes", entries, None).await;
    common::e2e::expect_row(&mut c, "INSERT", "notes", 2).await;
    common::e2e::expect_row(&mut c, "INSERT", "notes", 3).await;
    let sys = common::e2e::next_system(&mut c).await;
    assert_eq!(
        (&sys["recovered"], &sys["count"]),
        (&json!(true), &json!(2)),
        "{sys}"
    );
    sql.batch_execute("insert into notes values (4, 'live')")
        .await
        .unwrap();
    common::e2e::expect_row(&mut c, "INSERT", "notes", 4).await;
}

/// Nodes on another Redis database form a cluster of their own (Redis pub/sub ignores
/// database numbers, so the number is in the channel's name), and a node whose
/// `node_timeout_secs` is longer than its peers' (a rolling deploy changing it) is not
/// given up between two of its heartbeats: its peers wait by the timeout it tells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_redis_database_is_another_cluster_and_a_longer_timeout_is_waited_for() {
    use common::cluster::{Node, NodeSpec};
    let prod = TestCluster::start(2, 2, None).await;
    let staging = NodeSpec {
        redis_url: format!("{}/5", prod.redis.url()),
        ..prod.spec.clone()
    };
    let s1 = Node::start("staging1", &staging).await;
    let s2 = Node::start("staging2", &staging).await;
    for node in [&s1, &s2] {
        node.wait_cluster("synced with the other staging node", |s| {
            synced_peers(s) == 1
        })
        .await;
    }
    // The staging nodes heard each other: had their messages reached database 0's
    // channel, the production nodes would have heard them too.
    for node in &prod.nodes {
        let peers = node.cluster_status().await["peers"].clone();
        assert_eq!(
            peers.as_array().map(Vec::len),
            Some(1),
            "{}: {peers}",
            node.name
        );
    }

    // Heartbeats every 2 s, where the others give a peer up after 2 s of silence.
    let slow = NodeSpec {
        node_timeout_secs: 10,
        ..prod.spec.clone()
    };
    let slow = Node::start("slow", &slow).await;
    for node in &prod.nodes {
        node.wait_cluster("synced with the slow node", |s| synced_peers(s) == 2)
            .await;
    }
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        for node in &prod.nodes {
            let peers = node.cluster_status().await["peers"].clone();
            assert_eq!(
                peers.as_array().map(Vec::len),
                Some(2),
                "{} gave a peer up after {:?}: {peers}",
                node.name,
                watched.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(slow);
}

/// Sends one command to Redis at `port` and returns its first reply line.
fn redis_command(port: u16, command: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    s.write_all(format!("{command}\r\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// A Redis that refuses the node's login ends its start with a message saying so, as a
/// Postgres refusal does: a node with the wrong password must not pass `/ready` and serve
/// broadcast and presence to its own clients alone. (Redis down still starts degraded.)
#[tokio::test]
async fn a_redis_that_refuses_the_login_ends_the_start() {
    let redis = common::cluster::RedisServer::start();
    assert_eq!(
        redis_command(redis.port, "CONFIG SET requirepass right-password-0123"),
        "+OK\r\n"
    );
    for (url, why) in [
        (redis.url(), "NOAUTH"),
        (
            format!("redis://:wrong-password@127.0.0.1:{}", redis.port),
            "Redis refused the connection",
        ),
    ] {
        // A node that starts anyway would serve until killed: bounded, and killed.
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_JWT_SECRET", common::hub::SECRET)
            .env("SWITCHBOARD_REDIS_URL", &url)
            .env_remove("DATABASE_URL")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| {
                panic!("switchboard serve against {url} was still running after 30 s")
            })
            .expect("run switchboard serve");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "started against {url}:\n{text}");
        assert!(
            text.contains("Redis refused the connection") && text.contains(why),
            "{text}"
        );
    }
}
