-- Row-scope checks for the hub: which subscribers may see a captured row.
--
-- Postgres applies row-level security only while scanning a table, and the row of a
-- change may already be gone or different. So the SELECT policies are evaluated against
-- the captured record instead: each USING expression, deparsed with search_path =
-- pg_catalog (every name qualified), runs over jsonb_populate_record(null::<table>, rec)
-- aliased as the table's own name, as the subscriber's role and with its JWT claims set.
-- Everything runs in the caller's (read-only) transaction and changes nothing.

-- What a role may see of a table, decided once per (table, role) in a batch:
--   mode 'deny' (nothing), 'all' (every row) or 'rls' (rows where check_sql says so);
--   columns: null = all columns, else the selectable ones in attribute order;
--   check_sql: for 'rls', a query over $1 (row) and $2 (old row or null) returning
--   (row visible, old row visible).
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
    if not found then
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

-- Visibility of a batch of rows for many (role, claims) viewers, in one call.
-- Items (one per change): table oid, the row judged (new row; old row for DELETE) and
-- the old row of an UPDATE (else null). Checks (one per item x viewer): 1-based item
-- index, role, claims JSON text. Returns one row per check. An error while evaluating
-- a viewer's policies (bad claims, missing privilege inside a policy, ...) means
-- "not visible" for that viewer only.
create or replace function realtime.visible_to(
    item_rel oid[],
    item_row jsonb[],
    item_old jsonb[],
    check_item int[],
    check_role text[],
    check_claims text[])
returns table (check_no int, visible bool, old_visible bool, columns text[])
language plpgsql volatile
as $fn$
#variable_conflict use_column
declare
    saved_role text := current_setting('role');
    saved_claims text := coalesce(current_setting('request.jwt.claims', true), '');
    saved_sub text := coalesce(current_setting('request.jwt.claim.sub', true), '');
    saved_claim_role text := coalesce(current_setting('request.jwt.claim.role', true), '');
    c record;
    stmt text;
    ready text[] := '{}';
    v bool;
    ov bool;
begin
    -- Policies may call functions; none of them may change anything here.
    perform set_config('transaction_read_only', 'on', true);
    for c in
        with item as (
            select i, rel, rec, old
              from unnest(item_rel, item_row, item_old) with ordinality as u(rel, rec, old, i)
        ),
        chk as (
            select n, item.rel, item.rec, item.old, u.role_name, u.claims
              from unnest(check_item, check_role, check_claims) with ordinality
                   as u(item_no, role_name, claims, n)
              join item on item.i = u.item_no
        ),
        rule as materialized (
            select p.rel, p.role_name, r.mode, r.columns, r.check_sql
              from (select distinct rel, role_name from chk) p
             cross join lateral realtime.visibility_rule(p.rel, p.role_name) r
        )
        select chk.n, chk.role_name, chk.claims, chk.rec, chk.old,
               rule.mode, rule.columns, rule.check_sql
          from chk
          join rule on rule.rel = chk.rel and rule.role_name = chk.role_name
         order by chk.n
    loop
        check_no := c.n;
        columns := c.columns;
        visible := false;
        old_visible := false;
        if c.rec is null or c.mode = 'deny' then
            null;
        elsif c.mode = 'all' then
            visible := true;
            old_visible := c.old is not null;
        else
            begin
                -- Checks are prepared once per session and text (a policy change
                -- changes the text, hence the name), so repeated checks skip planning.
                stmt := 'switchboard_rls_' || md5(c.check_sql);
                if not stmt = any(ready) then
                    if not exists (select 1 from pg_catalog.pg_prepared_statements p where p.name = stmt) then
                        execute format('prepare %I(jsonb, jsonb) as %s', stmt, c.check_sql);
                    end if;
                    ready := ready || stmt;
                end if;
                perform set_config('request.jwt.claims', c.claims, true),
                        set_config('request.jwt.claim.sub',
                                   coalesce(c.claims::jsonb ->> 'sub', ''), true),
                        set_config('request.jwt.claim.role', c.role_name, true),
                        set_config('role', c.role_name, true);
                execute format('execute %I(%L, %L)', stmt, c.rec, c.old) into v, ov;
                perform set_config('role', saved_role, true);
                visible := v;
                old_visible := ov;
            exception when others then
                visible := false;
                old_visible := false;
            end;
        end if;
        return next;
    end loop;
    perform set_config('role', saved_role, true),
            set_config('request.jwt.claims', saved_claims, true),
            set_config('request.jwt.claim.sub', saved_sub, true),
            set_config('request.jwt.claim.role', saved_claim_role, true);
end
$fn$;

revoke all on function realtime.visibility_rule(oid, text) from public;
revoke all on function realtime.visible_to(oid[], jsonb[], jsonb[], int[], text[], text[]) from public;
