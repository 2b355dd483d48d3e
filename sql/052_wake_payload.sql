-- Wake-ups that carry the change. While a hub waits for wake-ups (it holds a lease), a
-- capture trigger that logged its statement in one log row (1 to 100 rows) puts that log
-- row into the NOTIFY payload when it fits (for the first 16 statements of a transaction),
-- so the hub can deliver it without first reading the log (see src/capture/carried.rs).
-- The log row is written exactly as before and stays
-- the truth: the hub's next read skips the rows it delivered ahead and delivers anything a
-- wake-up did not carry. Larger statements, and payloads of 7,000 bytes or more, send the
-- empty wake-up as before. Writers pay for this only while a hub is idle enough to hold a
-- lease: a busy hub polls and writers send no NOTIFY at all.
--
-- The payload: {"id", "xid" (text), "at" (created_at, µs since the epoch), "rv"
-- (realtime.rules_version()), "s", "t", "op", "rows", "old_rows"}.
--
-- Leases per hub. A hub delivers ahead only while every transaction that could commit
-- before a carried one sends a wake-up, that is while its own lease holds. Before this, one
-- hub giving up the lease (because it polls) ended every hub's; now each hub's lease is
-- its own row and `realtime.wake_until` is the latest of them, so a busy hub stops the
-- wake-ups only when no other hub waits for them.

create table if not exists realtime.wake_leases (
    pid int primary key,
    until_ms bigint not null
);

-- Lease changes between hubs are serialised by one advisory lock.
create or replace function realtime.want_wake(lease_ms bigint) returns boolean
language plpgsql security definer set search_path = '' as $fn$
declare
    now_ms bigint := (extract(epoch from pg_catalog.clock_timestamp()) * 1000)::bigint;
    held boolean;
begin
    perform pg_catalog.pg_advisory_xact_lock(8314046417155958899);
    held := (select last_value from realtime.wake_until) > now_ms;
    delete from realtime.wake_leases where until_ms <= now_ms;
    insert into realtime.wake_leases (pid, until_ms)
    values (pg_catalog.pg_backend_pid(), now_ms + lease_ms)
    on conflict (pid) do update set until_ms = excluded.until_ms;
    perform pg_catalog.setval('realtime.wake_until',
        (select pg_catalog.max(l.until_ms) from realtime.wake_leases l));
    return held;
end
$fn$;

create or replace function realtime.drop_wake() returns void
language plpgsql security definer set search_path = '' as $fn$
declare
    now_ms bigint := (extract(epoch from pg_catalog.clock_timestamp()) * 1000)::bigint;
begin
    perform pg_catalog.pg_advisory_xact_lock(8314046417155958899);
    delete from realtime.wake_leases
    where pid = pg_catalog.pg_backend_pid() or until_ms <= now_ms;
    perform pg_catalog.setval('realtime.wake_until',
        coalesce((select pg_catalog.max(l.until_ms) from realtime.wake_leases l), 1));
end
$fn$;

-- The wake-up of one statement's log row: the row itself when it fits and the transaction
-- has carried fewer than 16 rows, else empty. (Empty wake-ups of one transaction are sent
-- once, so a transaction of many statements sends at most 17.)
create or replace function realtime.wake_with(
    w_id bigint, w_xid xid8, w_at timestamptz, w_op text, w_schema text, w_table text,
    w_rows json, w_old_rows json
) returns void
language plpgsql security definer as $fn$
declare
    payload text := '';
    carried int := coalesce(
        nullif(pg_catalog.current_setting('switchboard.carried', true), '')::int, 0);
begin
    if w_id is not null and carried < 16
       and coalesce(pg_catalog.octet_length(w_rows::text), 0)
           + coalesce(pg_catalog.octet_length(w_old_rows::text), 0) < 7000 then
        payload := pg_catalog.json_build_object(
            'id', w_id, 'xid', w_xid::text,
            'at', (pg_catalog.date_part('epoch', w_at) * 1000000)::bigint,
            'rv', realtime.rules_version(), 's', w_schema, 't', w_table, 'op', w_op,
            'rows', w_rows, 'old_rows', w_old_rows)::text;
        if pg_catalog.octet_length(payload) >= 7900 then
            payload := '';
        else
            perform pg_catalog.set_config('switchboard.carried', (carried + 1)::text, true);
        end if;
    end if;
    perform pg_catalog.pg_notify('switchboard_changes', payload);
end
$fn$;

create or replace function realtime.capture_insert() returns trigger
language plpgsql security definer as $fn$
declare
    l realtime.changes;
begin
    insert into realtime.changes (schema_name, table_name, op, rows)
    select tg_table_schema, tg_table_name, 'INSERT', pg_catalog.json_agg(pg_catalog.row_to_json(n.*))
    from (select * from switchboard_new limit 101) n
    having pg_catalog.count(*) between 1 and 100
    returning * into l;
    if not found then
        insert into realtime.changes (schema_name, table_name, op, rows)
        select tg_table_schema, tg_table_name, 'INSERT', pg_catalog.json_agg(r.j order by r.i)
        from (select pg_catalog.row_to_json(n.*) as j, pg_catalog.row_number() over () as i
                from switchboard_new n) r
        group by (r.i - 1) / 100
        order by (r.i - 1) / 100;
    end if;
    if found and pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform realtime.wake_with(l.id, l.xid, l.created_at, 'INSERT', tg_table_schema,
                                   tg_table_name, l.rows, null);
    end if;
    return null;
end
$fn$;

-- Old and new rows of one UPDATE are paired by position, as in 012.
create or replace function realtime.capture_update() returns trigger
language plpgsql security definer as $fn$
declare
    l realtime.changes;
begin
    insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
    select tg_table_schema, tg_table_name, 'UPDATE',
           pg_catalog.json_agg(pg_catalog.row_to_json(n.*)),
           (select pg_catalog.json_agg(pg_catalog.row_to_json(o.*))
              from (select * from switchboard_old limit 101) o)
    from (select * from switchboard_new limit 101) n
    having pg_catalog.count(*) between 1 and 100
    returning * into l;
    if not found then
        insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
        select tg_table_schema, tg_table_name, 'UPDATE',
               pg_catalog.json_agg(n.j order by n.i), pg_catalog.json_agg(o.j order by n.i)
        from (select pg_catalog.row_to_json(x.*) as j, pg_catalog.row_number() over () as i
                from switchboard_new x) n
        join (select pg_catalog.row_to_json(x.*) as j, pg_catalog.row_number() over () as i
                from switchboard_old x) o on o.i = n.i
        group by (n.i - 1) / 100
        order by (n.i - 1) / 100;
    end if;
    if found and pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform realtime.wake_with(l.id, l.xid, l.created_at, 'UPDATE', tg_table_schema,
                                   tg_table_name, l.rows, l.old_rows);
    end if;
    return null;
end
$fn$;

create or replace function realtime.capture_delete() returns trigger
language plpgsql security definer as $fn$
declare
    l realtime.changes;
begin
    insert into realtime.changes (schema_name, table_name, op, old_rows)
    select tg_table_schema, tg_table_name, 'DELETE', pg_catalog.json_agg(pg_catalog.row_to_json(o.*))
    from (select * from switchboard_old limit 101) o
    having pg_catalog.count(*) between 1 and 100
    returning * into l;
    if not found then
        insert into realtime.changes (schema_name, table_name, op, old_rows)
        select tg_table_schema, tg_table_name, 'DELETE', pg_catalog.json_agg(r.j order by r.i)
        from (select pg_catalog.row_to_json(o.*) as j, pg_catalog.row_number() over () as i
                from switchboard_old o) r
        group by (r.i - 1) / 100
        order by (r.i - 1) / 100;
    end if;
    if found and pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform realtime.wake_with(l.id, l.xid, l.created_at, 'DELETE', tg_table_schema,
                                   tg_table_name, null, l.old_rows);
    end if;
    return null;
end
$fn$;

revoke all on function realtime.want_wake(bigint) from public;
revoke all on function realtime.drop_wake() from public;
revoke all on function realtime.wake_with(bigint, xid8, timestamptz, text, text, text, json, json) from public;
revoke all on function realtime.capture_insert() from public;
revoke all on function realtime.capture_update() from public;
revoke all on function realtime.capture_delete() from public;
revoke all on table realtime.wake_leases from public;
