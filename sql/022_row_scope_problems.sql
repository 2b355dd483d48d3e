-- One bad policy hurts one subscriber, visibly. `realtime.visible_to` already treats a
-- policy that raises for some viewer's claims (a cast that fails for one user, say) as
-- "not visible" for that viewer only; it now also says why, in a `problem` column, so the
-- hub can tell that subscriber instead of dropping its events silently.

-- Names what made a row-scope check raise for one viewer: the first applicable SELECT
-- policy of the table whose expression raises on the row (or the old row) with that
-- viewer's role and claims, as `policy "<name>" on <schema>.<table>: <error>`; the bare
-- error when no single policy raises on its own.
create or replace function realtime.policy_problem(
    rel oid, role_name text, claims text, rec jsonb, old jsonb, error text)
returns text
language plpgsql volatile
set search_path = pg_catalog
as $fn$
declare
    saved_role text := current_setting('role');
    tbl record;
    p record;
    r jsonb;
    ok bool;
begin
    select c.relname, n.nspname into tbl
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid = rel;
    if not found then
        return error;
    end if;
    for p in
        select pol.polname, pg_get_expr(pol.polqual, pol.polrelid) as expr
          from pg_policy pol
          join pg_roles v on v.rolname = role_name
         where pol.polrelid = rel
           and pol.polcmd in ('r', '*')
           and pol.polqual is not null
           and (0::oid = any(pol.polroles)
                or exists (select 1 from unnest(pol.polroles) pr(oid)
                            where pg_has_role(v.oid, pr.oid, 'USAGE')))
         order by pol.polpermissive desc, pol.polname
    loop
        foreach r in array array[rec, old] loop
            continue when r is null;
            begin
                perform set_config('request.jwt.claims', claims, true),
                        set_config('request.jwt.claim.sub', coalesce(claims::jsonb ->> 'sub', ''), true),
                        set_config('request.jwt.claim.role', role_name, true),
                        set_config('role', role_name, true);
                execute format('select (%s) from jsonb_populate_record(null::%I.%I, $1) as %I',
                               p.expr, tbl.nspname, tbl.relname, tbl.relname)
                   into ok using r;
                perform set_config('role', saved_role, true);
            exception when others then
                return format('policy %I on %I.%I: %s', p.polname, tbl.nspname, tbl.relname, sqlerrm);
            end;
        end loop;
    end loop;
    return error;
end
$fn$;

-- The new result column changes the function's type, hence drop and create. Callers that
-- select only the first four columns keep working.
drop function if exists realtime.visible_to(oid[], jsonb[], jsonb[], int[], text[], text[]);

create or replace function realtime.visible_to(
    item_rel oid[],
    item_row jsonb[],
    item_old jsonb[],
    check_item int[],
    check_role text[],
    check_claims text[])
returns table (check_no int, visible bool, old_visible bool, columns text[], problem text)
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
        select chk.n, chk.rel, chk.role_name, chk.claims, chk.rec, chk.old,
               rule.mode, rule.columns, rule.check_sql
          from chk
          join rule on rule.rel = chk.rel and rule.role_name = chk.role_name
         order by chk.n
    loop
        check_no := c.n;
        columns := c.columns;
        visible := false;
        old_visible := false;
        problem := null;
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
                problem := realtime.policy_problem(c.rel, c.role_name, c.claims, c.rec, c.old, sqlerrm);
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

revoke all on function realtime.policy_problem(oid, text, text, jsonb, jsonb, text) from public;
revoke all on function realtime.visible_to(oid[], jsonb[], jsonb[], int[], text[], text[]) from public;
