"""Plugin Gateway: registry API and reverse proxy for a plugin marketplace."""
