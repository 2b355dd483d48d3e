//! One subscriber's expensive filters cannot delay others (issue 15, "filter evaluation
//! is bounded"). The probe: long `like` patterns against a row with a long title used to
//! be judged on the path every change shares, so an unrelated subscriber waited for them.
//! Here the filter lane is held (a test hook), so the attacker's filters provably stay
//! unjudged while the unrelated subscriber gets its changes; once released, the attacker
//! gets exactly its matching rows, in commit order, row scope still applied.

mod common;

use common::e2e::*;
use common::hub::Vsn;
use serde_json::json;
use switchboard::changes::LaneHold;

const SETUP: &str = r#"
create table public.items (id bigserial primary key, title text, secret bool not null default false);
alter table public.items enable row level security;
create policy items_open on public.items for select to authenticated using (not secret);
grant select on public.items to authenticated;
select realtime.enable('public.items');
create table public.other (id bigserial primary key);
grant select on public.other to authenticated;
select realtime.enable('public.other');
"#;

const WAITING: &str = "switchboard_filter_lane_waiting";

#[tokio::test]
async fn an_expensive_filter_holds_only_its_own_connection_and_keeps_its_order() {
    let hold = LaneHold::default();
    let lane = hold.clone();
    let pg = PgHub::start_with(SETUP, move |c| c.filter_lane_hold = Some(lane)).await;
    let user = pg.user("6d1c1f0e-8b1a-4f55-9c3e-1f2d3b4c5a61");
    // 102 characters against 3,001-byte titles: (102 + 1) × 3,001 is past the default
    // inline cost of 65,536 per connection and change.
    let pattern = format!("%{}b", "a".repeat(100));
    let mut attacker = pg.connect(Vsn::V2).await;
    subscribe(
        &mut attacker,
        "realtime:attack",
        json!([
            {"event": "INSERT", "schema": "public", "table": "items",
             "filter": format!("title=like.{pattern}")},
            {"event": "INSERT", "schema": "public", "table": "other"},
        ]),
        Some(&user),
    )
    .await;
    let mut other = pg.connect(Vsn::V2).await;
    subscribe(
        &mut other,
        "realtime:unrelated",
        json!([
            {"event": "INSERT", "schema": "public", "table": "other"},
            {"event": "INSERT", "schema": "public", "table": "items", "filter": "title=eq.hello"},
        ]),
        Some(&user),
    )
    .await;

    hold.hold();
    let long = |last: char| format!("{}{last}", "a".repeat(3000));
    let insert_item = "insert into public.items (title, secret) values ($1, $2) returning id";
    let matching = pg.id(insert_item, &[&long('b'), &false]).await;
    // Matches the filter, but row scope hides it from the attacker.
    let _hidden = pg.id(insert_item, &[&long('b'), &true]).await;
    let _not_matching = pg.id(insert_item, &[&long('c'), &false]).await;
    let other_row = pg
        .id("insert into public.other default values returning id", &[])
        .await;
    let hello = pg.id(insert_item, &[&"hello", &false]).await;

    // The lane judges nothing while held, yet the unrelated subscriber gets its changes.
    expect_row(&mut other, "INSERT", "other", other_row).await;
    expect_row(&mut other, "INSERT", "items", hello).await;
    // Dispatch is past every insert: the attacker's two visible long rows wait unjudged.
    assert_eq!(pg.hub.metric(WAITING).await, Some(2.0));

    hold.release();
    // Commit order, and nothing between: neither the hidden row nor the one the filter
    // does not match; the `other` row waited behind the judged one.
    let first = expect_row(&mut attacker, "INSERT", "items", matching).await;
    assert_eq!(first.data["record"]["title"], json!(long('b')));
    expect_row(&mut attacker, "INSERT", "other", other_row).await;
    // Later changes still come through in order after the lane caught up.
    let after = pg.id(insert_item, &[&long('b'), &false]).await;
    expect_row(&mut attacker, "INSERT", "items", after).await;
    assert_eq!(pg.hub.metric(WAITING).await, Some(0.0));
}
