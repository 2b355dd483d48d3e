-- The event triggers fire on every role's DDL, and most roles have no rights in the
-- realtime schema: on Supabase, `postgres` itself is not a superuser. Run as invoker,
-- 011's trigger made a CREATE TABLE or GRANT by such a role fail ("permission denied for
-- schema realtime"), and 020's turned its ALTER PUBLICATION into a WARNING with capture
-- following only at the hub's next sync. Both now run as their owner, the role that ran
-- the migrations (it created the event triggers, so it is a superuser); each does one
-- fixed thing, and Postgres lets no one call an event trigger function directly. (060
-- fixes the search path of every such function.)
--
-- Any role may now move the rules version, which empties the hub's cached rules; DDL on
-- temporary objects alone (a session's own, never a rule's) no longer does.
create or replace function realtime.bump_rules_version()
returns event_trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $fn$
begin
    if exists (select 1 from pg_catalog.pg_event_trigger_ddl_commands())
       and not exists (select 1 from pg_catalog.pg_event_trigger_ddl_commands() c
                       where c.schema_name is distinct from 'pg_temp') then
        return;
    end if;
    perform pg_catalog.nextval('realtime.rules_version_seq');
end
$fn$;

alter function realtime.publication_changed() security definer;
