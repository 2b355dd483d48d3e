-- The event triggers fire on every role's DDL, and most roles have no rights in the
-- realtime schema: on Supabase, `postgres` itself is not a superuser. Run as invoker,
-- 011's trigger made a CREATE TABLE or GRANT by such a role fail ("permission denied for
-- schema realtime"), and 020's turned its ALTER PUBLICATION into a WARNING with capture
-- following only at the hub's next sync. Both now run as their owner, the role that ran
-- the migrations (it created the event triggers, so it is a superuser); each does one
-- fixed thing with an empty search_path, and Postgres lets no one call an event trigger
-- function directly.
alter function realtime.bump_rules_version() security definer;
alter function realtime.publication_changed() security definer;
