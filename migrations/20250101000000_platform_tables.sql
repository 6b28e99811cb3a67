-- Migration: 20250101000000_platform_tables.sql
--
-- The host platform owns users, spaces and space_members (the seed lists them as "existing
-- tables"). On a platform database they are already there and this migration leaves them alone;
-- on an empty database (development, tests) it creates the columns the gateway relies on.
-- Every further column must have a default so the host platform can insert rows with these only.

CREATE TABLE IF NOT EXISTS public.users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    email TEXT UNIQUE,
    display_name TEXT,
    created_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS public.spaces (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name TEXT,
    created_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS public.space_members (
    space_id UUID NOT NULL REFERENCES public.spaces(id) ON DELETE CASCADE,
    user_id UUID NOT NULL REFERENCES public.users(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at TIMESTAMPTZ DEFAULT NOW(),
    PRIMARY KEY (space_id, user_id)
);

-- Membership is looked up by user on every authorized request.
CREATE INDEX IF NOT EXISTS idx_space_members_user ON public.space_members(user_id);
