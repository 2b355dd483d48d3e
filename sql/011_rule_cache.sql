-- Lets the hub decide common row-scope cases in-process instead of in `visible_to`:
--   * realtime.rules_version() changes whenever DDL that can change visibility runs
--     (policies, RLS on/off, grants, tables), so the hub can cache per (table, role)
--     rules and drop them at once when they may be stale;
--   * realtime.own_rows_column(rel, role) recognises the usual portal policy
--     `using (<uuid column> = auth.uid())` and names its column.

create sequence if not exists realtime.rules_version_seq;

create or replace function realtime.bump_rules_version()
returns event_trigger
language plpgsql
set search_path = ''
as $fn$
begin
    perform pg_catalog.nextval('realtime.rules_version_seq');
end
$fn$;

do $do$
begin
    if not exists (select 1 from pg_catalog.pg_event_trigger where evtname = 'switchboard_rules_version') then
        begin
            create event trigger switchboard_rules_version on ddl_command_end
                execute function realtime.bump_rules_version();
        exception when insufficient_privilege then
            raise notice 'switchboard: cannot create an event trigger; row-scope rules are re-read every second';
        end;
    end if;
end
$do$;

-- The sequence value while the event trigger exists; otherwise a value that changes
-- every second (so cached rules live at most a second).
create or replace function realtime.rules_version()
returns bigint
language sql stable
set search_path = ''
as $fn$
    select case
        when exists (select 1 from pg_catalog.pg_event_trigger
                      where evtname = 'switchboard_rules_version' and evtenabled <> 'D')
        then (select last_value from realtime.rules_version_seq)
        else -(extract(epoch from pg_catalog.clock_timestamp()))::bigint
    end
$fn$;

create or replace function realtime.own_rows_column(rel oid, role_name text)
returns text
language plpgsql stable
set search_path = pg_catalog
as $fn$
declare
    viewer_oid oid;
    quals text[];
    restrictive_count int;
    col text;
    uid_src text;
begin
    select r.oid into viewer_oid from pg_roles r where r.rolname = role_name;
    if not found then
        return null;
    end if;
    select array_agg(pg_get_expr(p.polqual, p.polrelid)) filter (where p.polpermissive),
           count(*) filter (where not p.polpermissive)
      into quals, restrictive_count
      from pg_policy p
     where p.polrelid = rel
       and p.polcmd in ('r', '*')
       and p.polqual is not null
       and (0::oid = any(p.polroles)
            or exists (select 1 from unnest(p.polroles) pr(oid)
                        where pg_has_role(viewer_oid, pr.oid, 'USAGE')));
    if restrictive_count > 0 or coalesce(array_length(quals, 1), 0) <> 1 then
        return null;
    end if;
    col := substring(quals[1] from '^\(([a-z_][a-z0-9_]*) = auth\.uid\(\)\)$');
    if col is null or not exists (
        select 1 from pg_attribute a
         where a.attrelid = rel and a.attname = col and not a.attisdropped
           and a.atttypid = 'uuid'::regtype) then
        return null;
    end if;
    -- Only the standard auth.uid(): the `sub` claim as a uuid.
    select p.prosrc into uid_src
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname = 'auth' and p.proname = 'uid' and p.pronargs = 0;
    if uid_src is null
       or position('request.jwt.claim' in uid_src) = 0
       or position('sub' in uid_src) = 0 then
        return null;
    end if;
    return col;
end
$fn$;

revoke all on function realtime.own_rows_column(oid, text) from public;
