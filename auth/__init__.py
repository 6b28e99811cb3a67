"""Who is calling: credential parsing, JWT and API-key verification, space roles."""
