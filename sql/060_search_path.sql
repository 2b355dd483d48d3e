-- The hub's functions that run with their owner's rights (SECURITY DEFINER: the capture
-- triggers, the event triggers and what they call) run inside other roles' sessions, so
-- nothing those sessions set up may resolve a name in them:
--   * the capture triggers had no search path of their own: a writer whose search path
--     put a schema of its own first had its operators (`>=` in `count(*) between 1 and
--     100`, say) run with the owner's rights;
--   * an empty search path still searches the session's temporary schema first for types
--     and tables: a temporary domain named `oid`, whose check runs any function, ran with
--     the owner's rights when any DDL fired the event triggers.
-- Each such function, and each with a search path of its own (those run inside them),
-- now searches pg_catalog first and pg_temp last, as Postgres advises for SECURITY
-- DEFINER functions. A later migration that replaces one of them must say so again
-- (`set search_path = pg_catalog, pg_temp`); tests/sql_privileges.rs checks every one.
do $do$
declare
    f regprocedure;
begin
    for f in select p.oid::regprocedure from pg_catalog.pg_proc p
             where p.pronamespace = 'realtime'::regnamespace
               and (p.prosecdef or exists (select 1 from pg_catalog.unnest(p.proconfig) c
                                           where c like 'search\_path=%')) loop
        execute pg_catalog.format('alter function %s set search_path = pg_catalog, pg_temp', f);
    end loop;
end
$do$;
