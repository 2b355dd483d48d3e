-- Wake-ups on a channel only the hub and the capture triggers know. Any role may NOTIFY
-- any channel, and the hub delivered what a wake-up on `switchboard_changes` carried as a
-- committed change: a made-up row reached subscribers, and one naming a transaction
-- still to come marked that transaction's real log row as already read, so the hub
-- skipped it. The channel's name is now random, made here, kept in
-- realtime.wake_channel (readable by its owner and, through realtime.grant_hub, the hub),
-- and read by the hub before it listens. A wake-up on any other channel wakes nothing.
create table if not exists realtime.wake_channel (
    one  boolean primary key default true check (one),
    name text not null
);
revoke all on realtime.wake_channel from public;
insert into realtime.wake_channel (name)
values ('switchboard_wake_' || pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''))
on conflict do nothing;

-- As in 012, on the channel.
create or replace function realtime.wake() returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
begin
    if (select last_value from realtime.wake_until)
           > (extract(epoch from pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform pg_catalog.pg_notify((select c.name from realtime.wake_channel c), '');
    end if;
end
$fn$;

-- As in 052, on the channel.
create or replace function realtime.wake_with(
    w_id bigint, w_xid xid8, w_at timestamptz, w_op text, w_schema text, w_table text,
    w_rows json, w_old_rows json
) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
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
    perform pg_catalog.pg_notify((select c.name from realtime.wake_channel c), payload);
end
$fn$;

-- As in 056, and the hub reads the channel's name.
alter function realtime.grant_hub(text) rename to grant_hub_056;
create function realtime.grant_hub(hub text) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.grant_hub_056(hub);
    execute pg_catalog.format('grant select on realtime.wake_channel to %I', hub);
end
$fn$;
revoke all on function realtime.grant_hub(text) from public;
