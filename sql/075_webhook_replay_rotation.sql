-- Webhook operations that skipped or hid what an endpoint had not received.
--
-- Replay: `replay_webhook(name, null)` passed the check against the future and
-- `position_at(null)` fell back to now, so every change not yet delivered was skipped.
-- A replay from a time after the endpoint's oldest undelivered change moved its cursor
-- past the changes in between. Now a null `from` is refused, changing nothing, and a
-- replay starts from the earlier of the cursor and the position at `from`: it delivers
-- again, never skips. Same signatures, so existing grants are kept.
--
-- Secret rotation: `alter_webhook(name, secret => new)` switched at once, so a receiver
-- still holding the old secret failed every request until it was redeployed. Now the
-- endpoint keeps the secret it replaced and when (`previous_secret`,
-- `secret_rotated_at`); the delivering hub signs with both, new first, for
-- `webhook_secret_overlap_secs` after the rotation (a setting of the hub's). Giving the
-- secret it already has (a declared endpoint's, at every start) rotates nothing.
--
-- Lost data: pruning at the cap marked every hold the pruned rows were past, so a paused
-- endpoint whose tables had no changes at all was marked as having lost data (an error
-- in the log, the metric at 1) once other tables were written for longer than the cap.
-- Now a webhook endpoint's hold is marked only when rows of its own tables, by the names
-- its selection takes (the tables' names now and those they had, `table_names`), were
-- pruned past it; otherwise it goes on holding, unmarked. Rows are pruned as by 073,
-- below the live holds' horizon without looking at them.
--
-- Pause: `pause_webhook(name, null)` left the reason null; it is 'paused by an operator'
-- as when the reason is left out.

create or replace function realtime.pause_webhook(name text, reason text default 'paused by an operator')
returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $fn$
begin
    update realtime.webhook_endpoints e
    set paused = true, paused_reason = coalesce(pause_webhook.reason, 'paused by an operator'),
        version = e.version + 1, updated_at = pg_catalog.now()
    where e.name = pause_webhook.name;
    if not found then
        raise exception 'no webhook named "%"', pause_webhook.name using errcode = 'undefined_object';
    end if;
end
$fn$;

-- The earlier of two positions (`realtime.position_text` forms, pages and partly read
-- rows after the base allowed), as a base cursor: the base of the one whose base
-- snapshot sees no transaction the other's does not (its pages and partly read rows
-- are dropped: they may have read rows the other has not). When neither is earlier, the
-- snapshot that sees only what both see (the lower xmax, the in-progress transactions
-- of either), so nothing either has not read is passed over.
create or replace function realtime.earlier_position(a text, b text) returns text
language plpgsql immutable set search_path = pg_catalog, pg_temp as $fn$
declare
    sa pg_snapshot := realtime.position_snapshot(a);
    sb pg_snapshot := realtime.position_snapshot(b);
    xa xid8[] := array(select pg_catalog.pg_snapshot_xip(sa));
    xb xid8[] := array(select pg_catalog.pg_snapshot_xip(sb));
    low xid8 := least(pg_catalog.pg_snapshot_xmax(sa), pg_catalog.pg_snapshot_xmax(sb));
begin
    -- `a` is earlier: it ends no later and every transaction `b` has not read below its
    -- end, `a` has not read either.
    if pg_catalog.pg_snapshot_xmax(sa) <= pg_catalog.pg_snapshot_xmax(sb)
       and not exists (select 1 from pg_catalog.unnest(xb) x where x < low and not x = any(xa)) then
        return realtime.position_text(sa);
    end if;
    if pg_catalog.pg_snapshot_xmax(sb) <= pg_catalog.pg_snapshot_xmax(sa)
       and not exists (select 1 from pg_catalog.unnest(xa) x where x < low and not x = any(xb)) then
        return realtime.position_text(sb);
    end if;
    return low::text || ':' || coalesce(
        (select pg_catalog.string_agg(u.x::text, ',' order by u.x)
           from (select x from pg_catalog.unnest(xa) x union select x from pg_catalog.unnest(xb) x) u
          where u.x < low), '');
end
$fn$;

revoke all on function realtime.earlier_position(text, text) from public;

-- Delivers again every change still in the log that committed at or after `from`, and
-- everything the endpoint has not received yet: its cursor moves back to the position
-- at `from` if that is earlier, and otherwise stays. Clears the lost-data mark. Returns
-- the position delivery goes on from.
create or replace function realtime.replay_webhook(name text, "from" timestamptz) returns text
language plpgsql volatile set search_path = pg_catalog, pg_temp as $fn$
declare
    cur text;
    pos text;
begin
    if replay_webhook."from" is null then
        raise exception 'replay from must be a time (got null)'
            using errcode = 'invalid_parameter_value',
                  hint = 'Give the time to deliver again from, e.g. now() - interval ''1 hour''.';
    end if;
    if replay_webhook."from" > pg_catalog.clock_timestamp() then
        raise exception 'replay from must not be in the future (got %)', replay_webhook."from"
            using errcode = 'invalid_parameter_value';
    end if;
    select e.position into cur from realtime.webhook_endpoints e
    where e.name = replay_webhook.name
    for update;
    if not found then
        raise exception 'no webhook named "%"', replay_webhook.name using errcode = 'undefined_object';
    end if;
    pos := realtime.earlier_position(cur, realtime.position_at(replay_webhook."from"));
    -- The delivering hub stores a 2xx only over the cursor it started from, so that a
    -- batch in flight does not write over a replay: a cursor the replay keeps as it was
    -- is written in another, equivalent form (partly read: change 0 of log row 0, which
    -- no log row is).
    if pos = cur then
        pos := pos || '+0.0';
    end if;
    update realtime.webhook_endpoints e
    set position = pos, data_lost_at = null, failures = 0, version = e.version + 1,
        updated_at = pg_catalog.now()
    where e.name = replay_webhook.name;
    perform realtime.hold_webhook_position(replay_webhook.name, pos);
    return pos;
end
$fn$;

-- grant_hub (071) grants the new function too (a replay through the hub's REST API
-- calls it).
alter function realtime.grant_hub(text) rename to grant_hub_071;
create function realtime.grant_hub(hub text) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.grant_hub_071(hub);
    execute pg_catalog.format(
        'grant execute on function realtime.earlier_position(text, text) to %I', hub);
end
$fn$;
revoke all on function realtime.grant_hub(text) from public;
revoke all on function realtime.grant_hub_071(text) from public;

alter table realtime.webhook_endpoints
    add column if not exists previous_secret text,
    add column if not exists secret_rotated_at timestamptz;

-- Changes what is given (null leaves a field as it is; filter => '' removes the filter).
-- A new secret keeps the one it replaces as `previous_secret`.
create or replace function realtime.alter_webhook(
    name text,
    url text default null,
    tables regclass[] default null,
    events text[] default null,
    filter text default null,
    secret text default null
) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $fn$
declare
    evs text[] := pg_catalog.upper(alter_webhook.events::text)::text[];
    s text := realtime.check_webhook_secret(alter_webhook.secret);
begin
    perform realtime.check_webhook_fields(null, alter_webhook.url, alter_webhook.tables, evs);
    if alter_webhook.tables is not null then
        perform realtime.enable_webhook_tables(alter_webhook.tables);
    end if;
    update realtime.webhook_endpoints e
    set url = coalesce(alter_webhook.url, e.url),
        tables = coalesce(alter_webhook.tables, e.tables),
        events = coalesce(evs, e.events),
        filter = case when alter_webhook.filter is null then e.filter
                      else nullif(alter_webhook.filter, '') end,
        secret = coalesce(s, e.secret),
        previous_secret = case when s is distinct from e.secret and s is not null
                               then e.secret else e.previous_secret end,
        secret_rotated_at = case when s is distinct from e.secret and s is not null
                                 then pg_catalog.now() else e.secret_rotated_at end,
        version = e.version + 1,
        updated_at = pg_catalog.now()
    where e.name = alter_webhook.name;
    if not found then
        raise exception 'no webhook named "%"', alter_webhook.name using errcode = 'undefined_object';
    end if;
end
$fn$;

create or replace function realtime.prune_log(own pg_snapshot, keep_secs float8, cap_secs float8)
returns table (deleted bigint, lost bigint)
language sql volatile set search_path = pg_catalog, pg_temp set jit = off as $fn$
    with live as materialized (
        select h.kind = 'node' as node, h.snapshot
        from realtime.log_holds h
        where h.expires_at > pg_catalog.now() and (h.kind = 'node' or h.lost_at is null)
    ),
    horizon as materialized (
        select coalesce(pg_catalog.min(pg_catalog.pg_snapshot_xmin(l.snapshot)) filter (where l.node),
                        pg_catalog.pg_snapshot_xmax(own)) as node_xmin,
               coalesce(pg_catalog.min(pg_catalog.pg_snapshot_xmin(l.snapshot)) filter (where not l.node),
                        pg_catalog.pg_snapshot_xmax(own)) as held_xmin,
               coalesce(pg_catalog.array_agg(l.snapshot) filter (where l.node), '{}') as nodes,
               coalesce(pg_catalog.array_agg(l.snapshot) filter (where not l.node), '{}') as held
        from live l
    ),
    gone as (
        delete from realtime.changes c
        using horizon z
        where c.created_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => keep_secs)
          and pg_catalog.pg_visible_in_snapshot(c.xid, own)
          and (c.xid < z.node_xmin
               or not exists (select 1 from pg_catalog.unnest(z.nodes) s(snap)
                              where not pg_catalog.pg_visible_in_snapshot(c.xid, s.snap)))
          and (c.xid < z.held_xmin
               or c.created_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => cap_secs)
               or not exists (select 1 from pg_catalog.unnest(z.held) s(snap)
                              where not pg_catalog.pg_visible_in_snapshot(c.xid, s.snap)))
        returning c.xid, c.schema_name, c.table_name
    ),
    newest as materialized (
        select pg_catalog.max(g.xid) as xid from gone g
    ),
    -- The names each webhook endpoint selects log rows by (read only when a webhook hold
    -- may be marked).
    hook_tables as materialized (
        select e.name as holder, n.nspname::text as schema_name, c.relname::text as table_name
        from realtime.webhook_endpoints e
        cross join pg_catalog.unnest(e.tables) as t(rel)
        join pg_catalog.pg_class c on c.oid = t.rel
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        union
        select e.name, a.value -> 0 ->> 0, a.value -> 0 ->> 1
        from realtime.webhook_endpoints e
        cross join pg_catalog.jsonb_array_elements(
            case when pg_catalog.jsonb_typeof(e.table_names -> 'aliases') = 'array'
                 then e.table_names -> 'aliases' else '[]' end) as a
        union
        select e.name, l.value -> 1 ->> 0, l.value -> 1 ->> 1
        from realtime.webhook_endpoints e
        cross join pg_catalog.jsonb_array_elements(
            case when pg_catalog.jsonb_typeof(e.table_names -> 'last' -> 1) = 'array'
                 then e.table_names -> 'last' -> 1 else '[]' end) as l
    ),
    marked as (
        update realtime.log_holds h set lost_at = pg_catalog.now()
        from newest n
        where h.kind <> 'node' and h.lost_at is null and h.expires_at > pg_catalog.now()
          and pg_catalog.pg_snapshot_xmin(h.snapshot) <= n.xid
          and exists (select 1 from gone g
                      where not pg_catalog.pg_visible_in_snapshot(g.xid, h.snapshot)
                        and (h.kind <> 'webhook'
                             or exists (select 1 from hook_tables w
                                        where w.holder = h.holder
                                          and w.schema_name = g.schema_name
                                          and w.table_name = g.table_name)))
        returning 1
    ),
    cleared as (
        delete from realtime.log_holds h
        where h.expires_at < pg_catalog.now() - interval '1 day'
    )
    select (select pg_catalog.count(*) from gone), (select pg_catalog.count(*) from marked)
$fn$;

revoke all on function realtime.prune_log(pg_snapshot, float8, float8) from public;
