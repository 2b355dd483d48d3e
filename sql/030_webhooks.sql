-- Webhook endpoints: durable readers of the change log with a stored cursor each
-- (`position`, a capture Position in text form, advanced only after the endpoint answered
-- 2xx) and a hold on the log (`realtime.log_holds`, kind 'webhook') that keeps what the
-- endpoint has not received, up to the retention cap. One hub at a time delivers each
-- endpoint: it holds the lease (`lease_owner` until `lease_expires_at`), and every write
-- a hub makes about delivery is fenced by that lease.
--
-- The API: realtime.create_webhook / alter_webhook / drop_webhook, the view
-- realtime.webhooks, and pause_webhook / resume_webhook / retry_webhook / replay_webhook
-- for operations (the `switchboard webhooks` command and the REST API call these too).

create table if not exists realtime.webhook_endpoints (
    name             text primary key
                     check (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    url              text not null check (url ~* '^https?://[^[:space:]]+$'),
    tables           regclass[] not null check (pg_catalog.cardinality(tables) > 0),
    events           text[] not null default '{INSERT,UPDATE,DELETE}'
                     check (pg_catalog.cardinality(events) > 0
                            and events <@ '{INSERT,UPDATE,DELETE}'::text[]),
    filter           text,
    secret           text not null,
    -- 'sql' (create_webhook) or 'config' (declared in the hub's config file, re-applied at
    -- every start).
    source           text not null default 'sql' check (source in ('sql', 'config')),
    paused           boolean not null default false,
    paused_reason    text,
    position         text not null,
    -- Bumped by every change an operator makes, so the delivering hub reloads.
    version          bigint not null default 1,
    lease_owner      text,
    lease_expires_at timestamptz,
    last_success_at  timestamptz,
    last_attempt_at  timestamptz,
    last_error       text,
    last_error_at    timestamptz,
    last_status      int,
    -- Failed attempts since the last success (the endpoint pauses at a configured run).
    failures         int not null default 0,
    attempts         bigint not null default 0,
    delivered        bigint not null default 0,
    -- When the log was pruned past this endpoint's cursor (retention cap): changes were
    -- lost. Cleared by replay_webhook.
    data_lost_at     timestamptz,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now()
);

revoke all on realtime.webhook_endpoints from public;

-- The text form of a capture Position at `s` (`xmax:xip1,xip2`, see capture/cursor.rs).
create or replace function realtime.position_text(s pg_snapshot) returns text
language sql immutable set search_path = '' as $fn$
    select pg_catalog.pg_snapshot_xmax(s)::text || ':' || coalesce(
        (select pg_catalog.string_agg(x::text, ',' order by x)
           from pg_catalog.pg_snapshot_xip(s) as x), '')
$fn$;

-- The snapshot of a position's base cursor (pages and a partly delivered log row, which
-- follow it in the text, only ever read further): what a hold on the log keeps.
create or replace function realtime.position_snapshot(pos text) returns pg_snapshot
language sql immutable set search_path = '' as $fn$
    with base as (
        select pg_catalog.split_part(pg_catalog.split_part(pos, '/', 1), '+', 1) as b
    ), parts as (
        select pg_catalog.split_part(b, ':', 1) as xmax, pg_catalog.split_part(b, ':', 2) as xip
        from base
    )
    select (case when xip = '' then xmax else pg_catalog.split_part(xip, ',', 1) end
            || ':' || xmax || ':' || xip)::pg_snapshot
    from parts
$fn$;

-- A new Standard Webhooks secret: `whsec_` and 32 random bytes in base64.
create or replace function realtime.new_webhook_secret() returns text
language sql volatile set search_path = '' as $fn$
    select 'whsec_' || pg_catalog.encode(pg_catalog.decode(
        pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', '')
        || pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''), 'hex'), 'base64')
$fn$;

-- Raises a clear error unless `secret` is `whsec_` + base64 of at least 16 bytes.
create or replace function realtime.check_webhook_secret(secret text) returns text
language plpgsql immutable set search_path = '' as $fn$
begin
    if secret !~ '^whsec_[A-Za-z0-9+/]+={0,2}$'
       or pg_catalog.length(pg_catalog.decode(pg_catalog.substr(secret, 7), 'base64')) < 16 then
        raise exception 'webhook secret must be whsec_ followed by at least 16 bytes in base64'
            using errcode = 'invalid_parameter_value',
                  hint = 'Leave the secret out and one is generated.';
    end if;
    return secret;
exception when invalid_parameter_value then
    raise;
when others then
    raise exception 'webhook secret must be whsec_ followed by at least 16 bytes in base64'
        using errcode = 'invalid_parameter_value';
end
$fn$;

-- Keeps the endpoint's hold on the log at its position (and re-arms a hold marked lost).
create or replace function realtime.hold_webhook_position(endpoint text, pos text) returns void
language sql volatile set search_path = '' as $fn$
    insert into realtime.log_holds (kind, holder, snapshot, expires_at)
    values ('webhook', endpoint, realtime.position_snapshot(pos), 'infinity')
    on conflict (kind, holder) do update
    set snapshot = excluded.snapshot, expires_at = excluded.expires_at, lost_at = null,
        updated_at = pg_catalog.now()
$fn$;

-- Capture on for every table of an endpoint that does not have it yet.
create or replace function realtime.enable_webhook_tables(tbls regclass[]) returns void
language plpgsql volatile set search_path = '' as $fn$
declare
    t regclass;
begin
    foreach t in array tbls loop
        if not exists (
            select 1 from realtime.enabled_tables e
            join pg_catalog.pg_namespace n on n.nspname = e.schema_name
            join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = e.table_name
            where c.oid = t
        ) then
            perform realtime.enable(t);
        end if;
    end loop;
end
$fn$;

-- Creates an endpoint that receives the changes of `tables` committed from now on.
-- Returns its secret (generated when not given). Also enables capture on the tables.
create or replace function realtime.create_webhook(
    name text,
    url text,
    tables regclass[],
    events text[] default '{INSERT,UPDATE,DELETE}',
    filter text default null,
    secret text default null
) returns text
language plpgsql volatile set search_path = '' as $fn$
declare
    s text := realtime.check_webhook_secret(coalesce(create_webhook.secret, realtime.new_webhook_secret()));
    pos text := realtime.position_text(pg_catalog.pg_current_snapshot());
begin
    if exists (select 1 from realtime.webhook_endpoints e where e.name = create_webhook.name) then
        raise exception 'webhook "%" already exists', create_webhook.name
            using errcode = 'duplicate_object',
                  hint = 'Change it with realtime.alter_webhook, or drop it first.';
    end if;
    perform realtime.enable_webhook_tables(create_webhook.tables);
    insert into realtime.webhook_endpoints (name, url, tables, events, filter, secret, position)
    values (create_webhook.name, create_webhook.url, create_webhook.tables,
            pg_catalog.upper(create_webhook.events::text)::text[],
            create_webhook.filter, s, pos);
    perform realtime.hold_webhook_position(create_webhook.name, pos);
    return s;
end
$fn$;

-- Changes what is given (null leaves a field as it is; filter => '' removes the filter).
create or replace function realtime.alter_webhook(
    name text,
    url text default null,
    tables regclass[] default null,
    events text[] default null,
    filter text default null,
    secret text default null
) returns void
language plpgsql volatile set search_path = '' as $fn$
begin
    if alter_webhook.tables is not null then
        perform realtime.enable_webhook_tables(alter_webhook.tables);
    end if;
    update realtime.webhook_endpoints e
    set url = coalesce(alter_webhook.url, e.url),
        tables = coalesce(alter_webhook.tables, e.tables),
        events = coalesce(pg_catalog.upper(alter_webhook.events::text)::text[], e.events),
        filter = case when alter_webhook.filter is null then e.filter
                      else nullif(alter_webhook.filter, '') end,
        secret = coalesce(realtime.check_webhook_secret(alter_webhook.secret), e.secret),
        version = e.version + 1,
        updated_at = pg_catalog.now()
    where e.name = alter_webhook.name;
    if not found then
        raise exception 'no webhook named "%"', alter_webhook.name using errcode = 'undefined_object';
    end if;
end
$fn$;

create or replace function realtime.drop_webhook(name text) returns boolean
language plpgsql volatile set search_path = '' as $fn$
begin
    delete from realtime.log_holds h where h.kind = 'webhook' and h.holder = drop_webhook.name;
    delete from realtime.webhook_endpoints e where e.name = drop_webhook.name;
    return found;
end
$fn$;

-- An endpoint declared in the hub's config file: created if missing, else its url,
-- tables, events and filter (and secret, when given) are set to the declared ones.
create or replace function realtime.declare_webhook(
    name text, url text, tables regclass[], events text[], filter text, secret text
) returns void
language plpgsql volatile set search_path = '' as $fn$
begin
    if exists (select 1 from realtime.webhook_endpoints e where e.name = declare_webhook.name) then
        perform realtime.alter_webhook(declare_webhook.name, declare_webhook.url,
            declare_webhook.tables, declare_webhook.events,
            coalesce(declare_webhook.filter, ''), declare_webhook.secret);
    else
        perform realtime.create_webhook(declare_webhook.name, declare_webhook.url,
            declare_webhook.tables, declare_webhook.events, declare_webhook.filter,
            declare_webhook.secret);
    end if;
    update realtime.webhook_endpoints e set source = 'config' where e.name = declare_webhook.name;
end
$fn$;

create or replace function realtime.pause_webhook(name text, reason text default 'paused by an operator')
returns void
language plpgsql volatile set search_path = '' as $fn$
begin
    update realtime.webhook_endpoints e
    set paused = true, paused_reason = pause_webhook.reason, version = e.version + 1,
        updated_at = pg_catalog.now()
    where e.name = pause_webhook.name;
    if not found then
        raise exception 'no webhook named "%"', pause_webhook.name using errcode = 'undefined_object';
    end if;
end
$fn$;

-- Delivery goes on from the stored cursor: nothing was dropped while paused.
create or replace function realtime.resume_webhook(name text) returns void
language plpgsql volatile set search_path = '' as $fn$
begin
    update realtime.webhook_endpoints e
    set paused = false, paused_reason = null, failures = 0, version = e.version + 1,
        updated_at = pg_catalog.now()
    where e.name = resume_webhook.name;
    if not found then
        raise exception 'no webhook named "%"', resume_webhook.name using errcode = 'undefined_object';
    end if;
end
$fn$;

-- Tries the pending batch now instead of after the backoff (and resumes a paused endpoint).
create or replace function realtime.retry_webhook(name text) returns void
language sql volatile set search_path = '' as $fn$
    select realtime.resume_webhook(name)
$fn$;

-- A position from which every change committed at or after `t` is new: its xmax is the
-- oldest transaction in the log that committed at or after `t`, its in-progress list the
-- older transactions still running. Changes of newer transactions that committed just
-- before `t` are new to it too (they are delivered again, with their event ids).
create or replace function realtime.position_at(t timestamptz) returns text
language sql stable set search_path = '' as $fn$
    with first as (
        select pg_catalog.min(c.xid) as x from realtime.changes c
        where realtime.commit_time(c.xid, c.created_at) >= t
    ), snap as (
        select pg_catalog.pg_current_snapshot() as s
    )
    select case
        when first.x is null or first.x >= pg_catalog.pg_snapshot_xmax(snap.s)
            then realtime.position_text(snap.s)
        else first.x::text || ':' || coalesce(
            (select pg_catalog.string_agg(x::text, ',' order by x)
               from pg_catalog.pg_snapshot_xip(snap.s) as x where x < first.x), '')
    end
    from first, snap
$fn$;

-- Moves the endpoint's cursor back (or forward) to `from` and clears its lost-data mark.
-- Returns the new position.
create or replace function realtime.replay_webhook(name text, "from" timestamptz) returns text
language plpgsql volatile set search_path = '' as $fn$
declare
    pos text := realtime.position_at(replay_webhook."from");
begin
    update realtime.webhook_endpoints e
    set position = pos, data_lost_at = null, failures = 0, version = e.version + 1,
        updated_at = pg_catalog.now()
    where e.name = replay_webhook.name;
    if not found then
        raise exception 'no webhook named "%"', replay_webhook.name using errcode = 'undefined_object';
    end if;
    perform realtime.hold_webhook_position(replay_webhook.name, pos);
    return pos;
end
$fn$;

-- The endpoints as operators see them (the secret is left out: create_webhook returns it,
-- `switchboard webhooks secret <name>` prints it).
create or replace view realtime.webhooks as
select e.name, e.url,
       array(select pg_catalog.format('%I.%I', n.nspname, c.relname)
               from pg_catalog.unnest(e.tables) with ordinality as t(rel, i)
               join pg_catalog.pg_class c on c.oid = t.rel
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
              order by t.i) as tables,
       e.events, e.filter, e.source,
       case when e.paused then 'paused'
            when e.failures > 0 then 'failing'
            else 'active' end as state,
       e.paused_reason, e.position, e.lease_owner, e.lease_expires_at,
       e.last_success_at, e.last_attempt_at, e.last_error, e.last_error_at, e.last_status,
       e.failures, e.attempts, e.delivered, e.data_lost_at, e.created_at, e.updated_at
from realtime.webhook_endpoints e;

-- For the delivering hub --------------------------------------------------------------

-- Renews this hub's leases and takes endpoints whose lease is free or expired; returns
-- every endpoint this hub now holds.
create or replace function realtime.claim_webhooks(owner text, lease_secs float8)
returns table (name text, version bigint)
language sql volatile set search_path = '' as $fn$
    update realtime.webhook_endpoints e
    set lease_owner = claim_webhooks.owner,
        lease_expires_at = pg_catalog.now() + pg_catalog.make_interval(secs => lease_secs)
    where e.lease_owner = claim_webhooks.owner or e.lease_owner is null
       or e.lease_expires_at < pg_catalog.now()
    returning e.name, e.version
$fn$;

create or replace function realtime.release_webhooks(owner text) returns void
language sql volatile set search_path = '' as $fn$
    update realtime.webhook_endpoints e set lease_owner = null, lease_expires_at = null
    where e.lease_owner = release_webhooks.owner
$fn$;

-- After a 2xx for `events` events (or, with 0, a read that matched nothing): the cursor
-- moves to `pos`, the hold with it. False when `owner` no longer holds the lease.
create or replace function realtime.webhook_delivered(name text, owner text, pos text, events int)
returns boolean
language plpgsql volatile set search_path = '' as $fn$
begin
    update realtime.webhook_endpoints e
    set position = webhook_delivered.pos,
        last_success_at = case when webhook_delivered.events > 0 then pg_catalog.now() else e.last_success_at end,
        last_attempt_at = case when webhook_delivered.events > 0 then pg_catalog.now() else e.last_attempt_at end,
        failures = case when webhook_delivered.events > 0 then 0 else e.failures end,
        attempts = e.attempts + (webhook_delivered.events > 0)::int,
        delivered = e.delivered + webhook_delivered.events
    where e.name = webhook_delivered.name and e.lease_owner = webhook_delivered.owner;
    if not found then
        return false;
    end if;
    perform realtime.hold_webhook_position(webhook_delivered.name, webhook_delivered.pos);
    return true;
end
$fn$;

-- A failed attempt; pauses the endpoint once `pause_after` attempts in a row failed.
-- Returns (held: this hub still holds the lease, paused: the endpoint is paused now).
create or replace function realtime.webhook_failed(
    name text, owner text, error text, status int, pause_after int
) returns table (held boolean, paused boolean)
language sql volatile set search_path = '' as $fn$
    with u as (
        update realtime.webhook_endpoints e
        set failures = e.failures + 1, attempts = e.attempts + 1,
            last_attempt_at = pg_catalog.now(), last_error = webhook_failed.error,
            last_error_at = pg_catalog.now(), last_status = webhook_failed.status,
            paused = e.paused or e.failures + 1 >= pause_after,
            paused_reason = case when e.paused then e.paused_reason
                                 when e.failures + 1 >= pause_after then pg_catalog.format(
                                     'paused after %s failed attempts in a row', e.failures + 1)
                            end,
            version = e.version + (not e.paused and e.failures + 1 >= pause_after)::int
        where e.name = webhook_failed.name and e.lease_owner = webhook_failed.owner
        returning e.paused
    )
    select exists (select 1 from u), coalesce((select u.paused from u), false)
$fn$;

-- Moves lost-data marks from the holds (set when pruning at the cap passed an endpoint's
-- cursor) onto the endpoints, and re-arms the holds (so they go on holding from the
-- cursor); returns the endpoints newly marked.
create or replace function realtime.mark_lost_webhooks() returns setof text
language sql volatile set search_path = '' as $fn$
    with lost as (
        select h.holder, h.lost_at from realtime.log_holds h
        where h.kind = 'webhook' and h.lost_at is not null
        for update
    ), rearmed as (
        update realtime.log_holds h set lost_at = null, updated_at = pg_catalog.now()
        from lost where h.kind = 'webhook' and h.holder = lost.holder
    )
    update realtime.webhook_endpoints e
    set data_lost_at = lost.lost_at
    from lost where e.name = lost.holder and e.data_lost_at is null
    returning e.name
$fn$;

-- About how far an endpoint is behind: events of its tables and events after its cursor's
-- base (pages and a partly delivered row are counted as not delivered), counting at most
-- `cap` log rows, and the commit time of the oldest.
create or replace function realtime.webhook_backlog(pos text, tbls regclass[], ops text[], cap int)
returns table (events bigint, oldest timestamptz)
language sql stable set search_path = '' as $fn$
    with base as (
        select pg_catalog.split_part(pg_catalog.split_part(pos, '/', 1), '+', 1) as b
    ), cur as (
        select pg_catalog.split_part(b, ':', 1)::xid8 as xmax,
               pg_catalog.string_to_array(nullif(pg_catalog.split_part(b, ':', 2), ''), ',')::xid8[] as xip
        from base
    ), names as (
        select n.nspname::text as s, c.relname::text as t
        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where c.oid = any(tbls)
    ), pending as (
        select c.xid, c.created_at, c.rows, c.old_rows
        from realtime.changes c, cur
        where (c.xid >= cur.xmax or c.xid = any(cur.xip))
          and c.op = any(ops)
          and (c.schema_name, c.table_name) in (select s, t from names)
        limit cap
    )
    select coalesce(pg_catalog.sum(coalesce(pg_catalog.json_array_length(coalesce(p.rows, p.old_rows)), 1)), 0)::bigint,
           pg_catalog.min(realtime.commit_time(p.xid, p.created_at))
    from pending p
$fn$;

revoke all on function realtime.position_text(pg_snapshot) from public;
revoke all on function realtime.position_snapshot(text) from public;
revoke all on function realtime.new_webhook_secret() from public;
revoke all on function realtime.check_webhook_secret(text) from public;
revoke all on function realtime.hold_webhook_position(text, text) from public;
revoke all on function realtime.enable_webhook_tables(regclass[]) from public;
revoke all on function realtime.create_webhook(text, text, regclass[], text[], text, text) from public;
revoke all on function realtime.alter_webhook(text, text, regclass[], text[], text, text) from public;
revoke all on function realtime.drop_webhook(text) from public;
revoke all on function realtime.declare_webhook(text, text, regclass[], text[], text, text) from public;
revoke all on function realtime.pause_webhook(text, text) from public;
revoke all on function realtime.resume_webhook(text) from public;
revoke all on function realtime.retry_webhook(text) from public;
revoke all on function realtime.position_at(timestamptz) from public;
revoke all on function realtime.replay_webhook(text, timestamptz) from public;
revoke all on function realtime.claim_webhooks(text, float8) from public;
revoke all on function realtime.release_webhooks(text) from public;
revoke all on function realtime.webhook_delivered(text, text, text, int) from public;
revoke all on function realtime.webhook_failed(text, text, text, int, int) from public;
revoke all on function realtime.mark_lost_webhooks() from public;
revoke all on function realtime.webhook_backlog(text, regclass[], text[], int) from public;
revoke all on realtime.webhooks from public;
