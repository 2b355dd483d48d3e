-- Rules cached under a version that DDL had moved before it committed. The rules version
-- is a sequence (nextval is not transactional), so a GRANT, REVOKE or policy change run
-- inside a transaction moves it at once, while its catalog change is seen only at
-- commit. A change the hub judged in between fetched the table's rules from the catalog
-- as it still was and cached them under the new version; after the commit the version
-- did not move again, so the old rules stayed until the next DDL anywhere: a role whose
-- SELECT was revoked kept receiving the table's rows, hidden columns included.
--
-- Now every DDL transaction that moves the version also holds a shared advisory lock
-- until it ends, and the hub caches rules only when no such transaction is open after
-- it observed the version it caches them under (`realtime.rules_settled()`, asked before
-- the rules are read). Rules read while one is open are used for that batch only. The
-- version stays a sequence: writers read it in every captured statement, and a
-- transactional counter would make concurrent DDL wait for each other.

-- The lock: key 8314037285011469679 (pg_locks shows classid 1935762652, objid
-- 1853240687, objsubid 1).
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
    perform pg_catalog.pg_advisory_xact_lock_shared(8314037285011469679);
    perform pg_catalog.nextval('realtime.rules_version_seq');
end
$fn$;

create or replace function realtime.capture_sources_changed() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
begin
    perform pg_catalog.pg_advisory_xact_lock_shared(8314037285011469679);
    perform pg_catalog.nextval('realtime.rules_version_seq');
    return null;
end
$fn$;

-- Whether no transaction that moved the rules version is still open: rules read from the
-- catalog after this said true are those of every version observed before it.
create function realtime.rules_settled() returns boolean
language plpgsql volatile set search_path = pg_catalog, pg_temp as $fn$
begin
    if pg_catalog.pg_try_advisory_lock(8314037285011469679) then
        perform pg_catalog.pg_advisory_unlock(8314037285011469679);
        return true;
    end if;
    return false;
end
$fn$;
revoke all on function realtime.rules_settled() from public;

alter function realtime.grant_hub(text) rename to grant_hub_069;
create function realtime.grant_hub(hub text) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.grant_hub_069(hub);
    execute pg_catalog.format(
        'grant execute on function realtime.rules_settled() to %I', hub);
end
$fn$;
revoke all on function realtime.grant_hub(text) from public;
