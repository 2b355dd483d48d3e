-- Tables the real-client postgres_changes tests write to. Applied by tests/real_clients.rs
-- after the hub's migrations, on a fresh database per suite.

create table public.notes (
    id bigint primary key,
    body text not null,
    tags text[],
    meta jsonb,
    created_at timestamptz not null default now()
);
alter table public.notes replica identity full;
grant select on public.notes to anon, authenticated;

-- Row-level security: each authenticated user sees only the todos they own.
create table public.todos (
    id bigint primary key,
    owner uuid not null,
    title text not null,
    done boolean not null default false
);
grant select on public.todos to anon, authenticated;
alter table public.todos enable row level security;
create policy own_todos on public.todos for select to authenticated
    using (owner = auth.uid());

select realtime.enable('public.notes');
select realtime.enable('public.todos');
