-- A row-scope check prepared for a table that was then dropped and created again (a
-- `supabase db reset`, a migration that recreates a table) failed for every subscriber,
-- until the hub restarted: "function in FROM has unsupported return type". The check is
-- prepared once per pooled session under a name made from its text, and re-prepared
-- only when the text changes; the recreated table's check has the same text, and
-- Postgres does not re-plan it (it names the table only as a row type, which no plan
-- depends on), so it kept the dropped table's row type. The check's text now names the
-- row type's oid (in a comment), so a recreated table's check is prepared anew.
--
-- As in 066 otherwise.
create or replace function realtime.visibility_rule(rel oid, role_name text)
returns table (mode text, columns text[], check_sql text)
language plpgsql stable
set search_path = pg_catalog, pg_temp
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
    if not found or not pg_has_role(session_user, viewer.oid, 'MEMBER') then
        return query select 'deny', null::text[], null::text;
        return;
    end if;

    select c.relname, n.nspname, c.relnamespace, c.relowner, c.relrowsecurity, c.relforcerowsecurity,
           c.reltype
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
        'else coalesce((select %1$s from jsonb_populate_record(null::%2$I.%3$I, $2) as %3$I), false) end '
        '/* row type %4$s */',
        expr, tbl.nspname, tbl.relname, tbl.reltype);
end
$fn$;

revoke all on function realtime.visibility_rule(oid, text) from public;
