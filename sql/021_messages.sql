-- Private channels and database broadcasts the Supabase way: `realtime.messages` with
-- Supabase's columns, row-level security and grants (so a project's policies apply
-- unedited), `realtime.topic()`, `realtime.send`, `realtime.send_binary` and
-- `realtime.broadcast_changes`.
--
-- Differences from Supabase's own schema: the table is not partitioned by day (the hub
-- prunes it with a DELETE, `realtime.prune_messages`), and the timestamps default to UTC
-- explicitly (Supabase relies on the database's time zone being UTC) and to the clock
-- rather than the transaction start, so messages sent in one transaction replay in the
-- order they were sent.
--
-- A message reaches subscribers through the same change log and cursor as row changes:
-- an AFTER INSERT trigger copies each broadcastable row into `realtime.changes`, in the
-- inserting transaction, so it is delivered exactly once, only if that transaction
-- commits, and after a hub restart too.

create table if not exists realtime.messages (
    topic          text not null,
    extension      text not null,
    payload        jsonb,
    event          text,
    private        boolean default false,
    updated_at     timestamp without time zone not null default pg_catalog.timezone('utc', pg_catalog.clock_timestamp()),
    inserted_at    timestamp without time zone not null default pg_catalog.timezone('utc', pg_catalog.clock_timestamp()),
    id             uuid not null default pg_catalog.gen_random_uuid(),
    binary_payload bytea,
    constraint messages_pkey primary key (id, inserted_at),
    constraint messages_payload_exclusive check (payload is null or binary_payload is null) not valid
);

-- A table restored from a Supabase version older than binary payloads lacks the column
-- (which the trigger and `send_binary` below use) and its check; Supabase added both
-- later, the check NOT VALID, and so does this.
alter table realtime.messages add column if not exists binary_payload bytea;
do $do$
begin
    if not exists (select 1 from pg_catalog.pg_constraint
                   where conrelid = 'realtime.messages'::regclass
                     and conname = 'messages_payload_exclusive') then
        alter table realtime.messages add constraint messages_payload_exclusive
            check (payload is null or binary_payload is null) not valid;
    end if;
end
$do$;

-- A database restored from Supabase has a table partitioned by day whose partitions only
-- Supabase's server creates: a default partition keeps inserts working.
do $do$
begin
    if (select c.relkind from pg_catalog.pg_class c where c.oid = 'realtime.messages'::regclass) = 'p'
       and not exists (select 1 from pg_catalog.pg_partitioned_table p
                       where p.partrelid = 'realtime.messages'::regclass and p.partdefid <> 0) then
        create table realtime.messages_default partition of realtime.messages default;
    end if;
end
$do$;

create index if not exists messages_inserted_at_topic_index on realtime.messages
    using btree (inserted_at desc, topic)
    where extension = 'broadcast' and private is true;

alter table realtime.messages enable row level security;
grant select, insert, update on realtime.messages to anon, authenticated, service_role;

-- The log carries a message's id and a binary payload (`send_binary`).
alter table realtime.changes add column if not exists message_id uuid;
alter table realtime.changes add column if not exists binary_payload bytea;

-- The channel topic of the current authorization check or `send` (without `realtime:`);
-- NULL when unset.
create or replace function realtime.topic() returns text
language sql stable as $fn$
    select nullif(pg_catalog.current_setting('realtime.topic', true), '')::text
$fn$;

-- Copies a broadcastable message into the change log and wakes a waiting hub. Rows
-- without event, topic, private flag or payload (authorization probes) never get here
-- (the trigger's WHEN clause).
create or replace function realtime.log_message() returns trigger
language plpgsql security definer as $fn$
begin
    insert into realtime.changes (op, record, binary_payload, topic, event, private, message_id)
    values ('BROADCAST', new.payload, new.binary_payload, new.topic, new.event, new.private, new.id);
    perform realtime.wake();
    return null;
end
$fn$;

do $do$
begin
    if not exists (select 1 from pg_catalog.pg_trigger
                   where tgrelid = 'realtime.messages'::regclass and tgname = 'switchboard_broadcast') then
        create trigger switchboard_broadcast after insert on realtime.messages
            for each row
            when (new.event is not null and new.topic is not null and new.private is not null
                  and (new.payload is not null or new.binary_payload is not null))
            execute function realtime.log_message();
    end if;
end
$do$;

-- Supabase's `realtime.send`: runs with the caller's rights, so the caller's INSERT
-- policies on realtime.messages decide; adds an `id` to the payload; any failure becomes
-- a WARNING and the caller's transaction goes on.
create or replace function realtime.send(
    payload jsonb, event text, topic text, private boolean default true
) returns void
language plpgsql as $fn$
declare
    generated_id uuid;
    final_payload jsonb;
begin
    begin
        generated_id := pg_catalog.gen_random_uuid();
        if payload ? 'id' then
            final_payload := payload;
        else
            final_payload := pg_catalog.jsonb_set(payload, '{id}', pg_catalog.to_jsonb(generated_id));
        end if;
        execute pg_catalog.format('set local realtime.topic to %L', topic);
        insert into realtime.messages (id, payload, event, topic, private, extension)
        values (generated_id, final_payload, event, topic, private, 'broadcast');
    exception when others then
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
    end;
end
$fn$;

-- `send` for an opaque payload: v2 sockets get a binary frame, v1 sockets nothing.
create or replace function realtime.send_binary(
    payload bytea, event text, topic text, private boolean default true
) returns void
language plpgsql as $fn$
begin
    begin
        execute pg_catalog.format('set local realtime.topic to %L', topic);
        insert into realtime.messages (binary_payload, event, topic, private, extension)
        values (payload, event, topic, private, 'broadcast');
    exception when others then
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
    end;
end
$fn$;

-- Supabase's row-trigger helper: broadcasts a row change on a private topic.
create or replace function realtime.broadcast_changes(
    topic_name text, event_name text, operation text, table_name text, table_schema text,
    new record, old record, level text default 'ROW'
) returns void
language plpgsql as $fn$
declare
    row_data jsonb;
begin
    if level = 'STATEMENT' then
        raise exception 'function can only be triggered for each row, not for each statement';
    end if;
    if operation = 'INSERT' or operation = 'UPDATE' or operation = 'DELETE' then
        row_data := pg_catalog.jsonb_build_object(
            'old_record', old, 'record', new, 'operation', operation,
            'table', table_name, 'schema', table_schema);
        perform realtime.send(row_data, event_name, topic_name);
    else
        raise exception 'Unexpected operation type: %', operation;
    end if;
exception when others then
    raise exception 'Failed to process the row: %', sqlerrm;
end
$fn$;

-- Deletes messages older than `keep_secs`; returns how many.
create or replace function realtime.prune_messages(keep_secs float8) returns bigint
language sql volatile set search_path = '' as $fn$
    with gone as (
        delete from realtime.messages m
        where m.inserted_at < pg_catalog.timezone('utc', pg_catalog.now())
                              - pg_catalog.make_interval(secs => keep_secs)
        returning 1
    )
    select pg_catalog.count(*) from gone
$fn$;

revoke all on function realtime.log_message() from public;
revoke all on function realtime.prune_messages(float8) from public;
grant execute on function realtime.send(jsonb, text, text, boolean) to public;
grant execute on function realtime.topic() to public;
grant execute on function realtime.send_binary(bytea, text, text, boolean) to public;
grant execute on function realtime.broadcast_changes(text, text, text, text, text, record, record, text) to public;
