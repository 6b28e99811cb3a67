-- Migration: 20250101000600_api_keys.sql
--
-- Added by the contract, not in the seed: API keys, so that machines can call a space's plugins
-- and API without a user's JWT. A key belongs to one space and carries a role in it. Only a
-- SHA-256 of the key is stored: keys are 256-bit random values, so a slow password hash would add
-- latency to every call without adding safety. `prefix` lets people tell keys apart in listings.

CREATE TABLE IF NOT EXISTS public.api_keys (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    space_id UUID NOT NULL REFERENCES public.spaces(id) ON DELETE CASCADE,
    name VARCHAR(255) NOT NULL,
    role VARCHAR(20) NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    prefix VARCHAR(32) NOT NULL,
    key_hash BYTEA NOT NULL UNIQUE,
    created_by UUID REFERENCES public.users(id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS idx_api_keys_space ON public.api_keys(space_id);
