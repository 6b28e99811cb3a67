-- Migration: 20250101000200_infrastructure.sql
--
-- The seed's infrastructure tables, column for column.

CREATE TABLE IF NOT EXISTS public.infrastructure_instances (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL,
    type VARCHAR(50) NOT NULL, -- 'vm', 'docker_host', 'kubernetes', 'cloud_instance'
    host VARCHAR(255) NOT NULL,
    port INTEGER,
    protocol VARCHAR(10) DEFAULT 'ssh',

    -- Connection
    connection_type VARCHAR(50), -- 'ssh', 'docker_api', 'kubernetes', 'http'
    connection_config JSONB DEFAULT '{}'::jsonb, -- its "secrets" member is encrypted

    -- Status
    status VARCHAR(50) DEFAULT 'unknown', -- 'online', 'offline', 'error'
    last_health_check TIMESTAMPTZ,
    health_status JSONB DEFAULT '{}'::jsonb,

    -- Metadata
    os_type VARCHAR(50),
    os_version VARCHAR(50),
    resources JSONB, -- { cpu, memory, disk }
    tags TEXT[],

    -- Relations
    space_id UUID REFERENCES public.spaces(id),
    created_by UUID REFERENCES public.users(id),

    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    deleted_at TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS idx_infrastructure_instances_space ON public.infrastructure_instances(space_id);
CREATE INDEX IF NOT EXISTS idx_infrastructure_instances_type ON public.infrastructure_instances(type);
CREATE INDEX IF NOT EXISTS idx_infrastructure_instances_status ON public.infrastructure_instances(status);

CREATE TABLE IF NOT EXISTS public.instance_services (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_id UUID REFERENCES public.infrastructure_instances(id) ON DELETE CASCADE,

    -- Service Info
    name VARCHAR(255) NOT NULL,
    type VARCHAR(50) NOT NULL, -- 'docker_container', 'systemd_service', 'application'
    status VARCHAR(50) DEFAULT 'unknown', -- 'running', 'stopped', 'error'

    -- Service Details
    service_config JSONB DEFAULT '{}'::jsonb,
    endpoints JSONB DEFAULT '[]'::jsonb,
    health_check_url TEXT,

    -- Management
    management_plugin_id UUID REFERENCES public.service_registry(id),
    management_config JSONB DEFAULT '{}'::jsonb,

    -- Discovery
    discovered_at TIMESTAMPTZ DEFAULT NOW(),
    last_seen TIMESTAMPTZ DEFAULT NOW(),

    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),

    UNIQUE(instance_id, name, type)
);

CREATE INDEX IF NOT EXISTS idx_instance_services_instance ON public.instance_services(instance_id);
CREATE INDEX IF NOT EXISTS idx_instance_services_plugin ON public.instance_services(management_plugin_id);
CREATE INDEX IF NOT EXISTS idx_instance_services_status ON public.instance_services(status);

CREATE TABLE IF NOT EXISTS public.service_management_assignments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_service_id UUID REFERENCES public.instance_services(id) ON DELETE CASCADE,
    plugin_id UUID REFERENCES public.service_registry(id) ON DELETE CASCADE,

    -- Assignment
    assigned_by UUID REFERENCES public.users(id),
    assigned_at TIMESTAMPTZ DEFAULT NOW(),

    -- Configuration
    config JSONB DEFAULT '{}'::jsonb,
    credentials JSONB DEFAULT '{}'::jsonb, -- Encrypted (AES-256-GCM envelope)

    -- Status
    is_active BOOLEAN DEFAULT true,
    last_used TIMESTAMPTZ,

    UNIQUE(instance_service_id, plugin_id)
);

CREATE INDEX IF NOT EXISTS idx_service_management_assignments_service ON public.service_management_assignments(instance_service_id);
CREATE INDEX IF NOT EXISTS idx_service_management_assignments_plugin ON public.service_management_assignments(plugin_id);
