-- The hub without superuser. Migrations run as an admin (a superuser, or the owner of the
-- database); the hub itself can then run as a login role with no rights of its own beyond
-- the ones granted here, NOINHERIT and a member of exactly the roles its tokens may name
-- (`anon`, `authenticated`, `service_role`): PostgREST's `authenticator` pattern. Such a
-- role cannot read a table except by `set role` to a token's role, so a token's role is no
-- longer the only limit: Postgres refuses a role the hub is not a member of.
--
-- `realtime.grant_hub(role)` grants exactly what the hub does at runtime (listed below,
-- one line per use) and is idempotent; `switchboard migrate` (and `serve` with
-- `migrate_database_url`) calls it for the user of `database_url` after migrating.
-- A later migration that gives the hub something new to read or call adds it here.
--
-- `realtime.messages` has row-level security on, and a non-superuser hub is not its
-- owner, so what the hub does there as itself goes through SECURITY DEFINER functions:
-- the private-channel read probes, Broadcast Replay's read, and pruning.

-- Read probes of a private-channel decision (`authz`): rows without payload or event, so
-- the broadcast trigger ignores them; the caller's transaction is always rolled back.
create or replace function realtime.insert_probes(topic text, extensions text[], ids uuid[])
returns void
language sql volatile security definer set search_path = '' as $fn$
    insert into realtime.messages (topic, extension, id, inserted_at, updated_at)
    select insert_probes.topic, u.extension, u.id,
           pg_catalog.timezone('utc', pg_catalog.now()), pg_catalog.timezone('utc', pg_catalog.now())
    from unnest(insert_probes.extensions, insert_probes.ids) as u(extension, id)
$fn$;

-- Broadcast Replay (`authz/replay.rs`): the snapshot read under, how many stored private
-- broadcasts of `topic` since `since_ms` (ms since the epoch) there are, and the newest
-- `lim` of them. One statement, so the snapshot and the rows agree; the snapshot row comes
-- back even when nothing matches.
create or replace function realtime.replay_messages(topic text, since_ms bigint, lim bigint)
returns table (snapshot text, stored bigint, id text, event text, payload jsonb, binary_payload bytea)
language sql stable security definer set search_path = '' as $fn$
    with snap as materialized (select pg_catalog.pg_current_snapshot()::text as s),
    matching as (
        select m.id, m.event, m.payload, m.binary_payload, m.inserted_at from realtime.messages m
        where m.topic = replay_messages.topic and m.private is true and m.extension = 'broadcast'
          and m.inserted_at >= (pg_catalog.to_timestamp(replay_messages.since_ms / 1000.0) at time zone 'utc')
          and m.inserted_at < pg_catalog.timezone('utc', pg_catalog.now()) + interval '1 minute'
          and m.event is not null and (m.payload is not null or m.binary_payload is not null))
    select snap.s, (select pg_catalog.count(*) from matching), n.id::text, n.event, n.payload,
           n.binary_payload
    from snap left join lateral (
        select * from matching order by matching.inserted_at desc limit replay_messages.lim) n on true
$fn$;

-- Pruning realtime.messages deletes as the migrating role (RLS would hide every row from
-- a hub that is not the table's owner).
alter function realtime.prune_messages(float8) security definer;

-- Row scope decided in the hub (`visibility_rule` answers 'all' for a role with BYPASSRLS
-- without ever switching to it): a role the calling user may not `set role` to sees
-- nothing, so Postgres's membership is a limit even where no `set role` happens.
create or replace function realtime.visibility_rule(rel oid, role_name text)
returns table (mode text, columns text[], check_sql text)
language plpgsql stable
set search_path = pg_catalog
as $fn$
declare
    viewer record;
    tbl record;
    cols text[];
    permissive text;
    restrictive text;
    expr text;
begin
    select r.oid, r.rolsuper or r.rolbypassrls as bypass
      into viewer from pg_roles r where r.rolname = role_name;
    if not found or not pg_has_role(current_user, viewer.oid, 'MEMBER') then
        return query select 'deny', null::text[], null::text;
        return;
    end if;

    select c.relname, n.nspname, c.relnamespace, c.relowner, c.relrowsecurity, c.relforcerowsecurity
      into tbl
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid = rel;
    if not found or not has_schema_privilege(viewer.oid, tbl.relnamespace, 'USAGE') then
        return query select 'deny', null::text[], null::text;
        return;
    end if;

    if not has_table_privilege(viewer.oid, rel, 'SELECT') then
        select array_agg(a.attname::text order by a.attnum) into cols
          from pg_attribute a
         where a.attrelid = rel and a.attnum > 0 and not a.attisdropped
           and has_column_privilege(viewer.oid, rel, a.attnum, 'SELECT');
        -- Nothing selectable, or a primary-key column hidden: send nothing.
        if cols is null or exists (
            select 1
              from pg_index i
              join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
             where i.indrelid = rel and i.indisprimary
               and not has_column_privilege(viewer.oid, rel, a.attnum, 'SELECT')
        ) then
            return query select 'deny', null::text[], null::text;
            return;
        end if;
    end if;

    if not tbl.relrowsecurity
       or viewer.bypass
       or (not tbl.relforcerowsecurity and pg_has_role(viewer.oid, tbl.relowner, 'USAGE')) then
        return query select 'all', cols, null::text;
        return;
    end if;

    select string_agg('(' || pg_get_expr(p.polqual, p.polrelid) || ')', ' or ' order by p.polname)
               filter (where p.polpermissive),
           string_agg('(' || pg_get_expr(p.polqual, p.polrelid) || ')', ' and ' order by p.polname)
               filter (where not p.polpermissive)
      into permissive, restrictive
      from pg_policy p
     where p.polrelid = rel
       and p.polcmd in ('r', '*')
       and p.polqual is not null
       and (0::oid = any(p.polroles)
            or exists (select 1 from unnest(p.polroles) pr(oid)
                        where pg_has_role(viewer.oid, pr.oid, 'USAGE')));
    -- No applicable permissive policy: RLS shows nothing.
    if permissive is null then
        return query select 'deny', null::text[], null::text;
        return;
    end if;

    expr := '(' || permissive || ')' || coalesce(' and ' || restrictive, '');
    return query select 'rls', cols, format(
        'select coalesce((select %1$s from jsonb_populate_record(null::%2$I.%3$I, $1) as %3$I), false), '
        'case when $2 is null then false '
        'else coalesce((select %1$s from jsonb_populate_record(null::%2$I.%3$I, $2) as %3$I), false) end',
        expr, tbl.nspname, tbl.relname);
end
$fn$;

revoke all on function realtime.visibility_rule(oid, text) from public;

-- Everything the hub does at runtime, granted to `hub` (a login role; see the README,
-- "Running as a non-superuser"). Idempotent. Raises when `hub` is missing.
create or replace function realtime.grant_hub(hub text) returns void
language plpgsql volatile set search_path = '' as $fn$
declare
    g text;
begin
    if not exists (select 1 from pg_catalog.pg_roles r where r.rolname = hub) then
        raise exception 'role "%" does not exist', hub using errcode = 'undefined_object',
            hint = 'Create it first: create role ' || pg_catalog.quote_ident(hub)
                   || ' login noinherit password ''...''; grant anon, authenticated, service_role to '
                   || pg_catalog.quote_ident(hub) || ';';
    end if;
    foreach g in array array[
        'usage on schema realtime',
        -- db::migrate: whether anything is pending (a hub with nothing to apply never
        -- needs DDL rights)
        'select on realtime.switchboard_migrations',
        -- capture: read the log; retention: prune it (prune_log); the change feed and
        -- resume replay read it too
        'select, delete on realtime.changes',
        'execute on function realtime.prune_log(pg_snapshot, float8, float8)',
        'select on realtime.log_pruned',
        'execute on function realtime.log_lost_since(xid8, xid8[])',
        -- capture: the wake-up lease
        'execute on function realtime.want_wake(bigint)',
        'execute on function realtime.drop_wake()',
        -- log holds: the hub's own checkpoint ("node"), parked and live resume rows
        'select, insert, update, delete on realtime.log_holds',
        -- catalog and row scope (the rules version, per (table, role) rules, checks)
        'usage, select on sequence realtime.rules_version_seq',
        'select on realtime.enabled_tables',
        'execute on function realtime.visibility_rule(oid, text)',
        'execute on function realtime.row_keys(oid, text)',
        'execute on function realtime.own_rows_column(oid, text)',
        'execute on function realtime.visible_to(oid[], jsonb[], jsonb[], int[], text[], text[])',
        'execute on function realtime.policy_problem(oid, text, text, jsonb, jsonb, text)',
        -- private channels and Broadcast Replay (the probes as the user need no grant
        -- here: realtime.messages is granted to the token roles)
        'execute on function realtime.insert_probes(text, text[], uuid[])',
        'execute on function realtime.replay_messages(text, bigint, bigint)',
        -- upkeep: publication sync, pruning realtime.messages
        'execute on function realtime.sync_publication()',
        'execute on function realtime.prune_messages(float8)',
        -- webhooks: delivery (leases, fenced writes, holds), declared endpoints (which
        -- may enable capture of their tables), the REST operations and status
        'select, insert, update on realtime.webhook_endpoints',
        'select on realtime.webhooks',
        'execute on function realtime.claim_webhooks(text, float8)',
        'execute on function realtime.release_webhooks(text)',
        'execute on function realtime.webhook_delivered(text, text, text, int)',
        'execute on function realtime.webhook_failed(text, text, text, int, int)',
        'execute on function realtime.mark_lost_webhooks()',
        'execute on function realtime.webhook_backlog(text, regclass[], text[], int)',
        'execute on function realtime.hold_webhook_position(text, text)',
        'execute on function realtime.position_snapshot(text)',
        'execute on function realtime.position_text(pg_snapshot)',
        'execute on function realtime.position_at(timestamptz)',
        'execute on function realtime.declare_webhook(text, text, regclass[], text[], text, text)',
        'execute on function realtime.create_webhook(text, text, regclass[], text[], text, text)',
        'execute on function realtime.alter_webhook(text, text, regclass[], text[], text, text)',
        'execute on function realtime.enable_webhook_tables(regclass[])',
        'execute on function realtime.enable(regclass)',
        'execute on function realtime.new_webhook_secret()',
        'execute on function realtime.check_webhook_secret(text)',
        'execute on function realtime.pause_webhook(text, text)',
        'execute on function realtime.resume_webhook(text)',
        'execute on function realtime.retry_webhook(text)',
        'execute on function realtime.replay_webhook(text, timestamptz)'
    ] loop
        execute 'grant ' || g || ' to ' || pg_catalog.quote_ident(hub);
    end loop;
end
$fn$;

revoke all on function realtime.insert_probes(text, text[], uuid[]) from public;
revoke all on function realtime.replay_messages(text, bigint, bigint) from public;
revoke all on function realtime.prune_messages(float8) from public;
revoke all on function realtime.grant_hub(text) from public;
