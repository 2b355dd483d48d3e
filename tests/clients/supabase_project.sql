-- A project written the Supabase way, as its own migrations would set it up: tables added
-- to the supabase_realtime publication (no realtime.enable), one with REPLICA IDENTITY
-- FULL and one without, private channels authorized by policies on realtime.messages
-- that use realtime.topic() and auth.uid(), a trigger that calls
-- realtime.broadcast_changes, and a row policy that raises for a token whose `team`
-- claim is not a uuid. Applied by tests/real_clients.rs after the hub's migrations.

create table public.posts (
    id     bigint primary key,
    author uuid,
    body   text not null,
    likes  int not null default 0
);
alter table public.posts replica identity full;

create table public.tickets (
    id     bigint primary key,
    title  text not null,
    status text not null default 'open'
);

grant select on public.posts, public.tickets to anon, authenticated;
alter publication supabase_realtime add table public.posts, public.tickets;

-- Who is in which private room; `can_send` false makes a read-only member.
create table public.room_members (
    room     text not null,
    user_id  uuid not null,
    can_send boolean not null default true,
    primary key (room, user_id)
);
grant select on public.room_members to authenticated;

create policy "members can read their rooms" on realtime.messages
    for select to authenticated
    using (exists (
        select 1 from public.room_members m
        where m.room = (select realtime.topic()) and m.user_id = (select auth.uid())));

create policy "members can send to their rooms" on realtime.messages
    for insert to authenticated
    with check (exists (
        select 1 from public.room_members m
        where m.room = (select realtime.topic()) and m.user_id = (select auth.uid())
          and m.can_send));

-- Every ticket change is broadcast on the private topic `tickets`.
create function public.tickets_broadcast() returns trigger
language plpgsql security definer as $$
begin
    perform realtime.broadcast_changes(
        'tickets', tg_op, tg_op, tg_table_name, tg_table_schema, new, old);
    return null;
end
$$;

create trigger tickets_broadcast after insert or update or delete on public.tickets
    for each row execute function public.tickets_broadcast();

-- Team notes: visible to the token's team; a token whose team claim is not a uuid makes
-- the policy raise.
create table public.team_notes (
    id   bigint primary key,
    team uuid not null,
    body text not null
);
alter table public.team_notes enable row level security;
create policy "team members read team notes" on public.team_notes
    for select to authenticated
    using (team = (auth.jwt() ->> 'team')::uuid);
grant select on public.team_notes to authenticated;
alter publication supabase_realtime add table public.team_notes;
