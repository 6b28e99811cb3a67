"""The proxy: /spaces/{space_id}/plugins/{slug}/{path} → the plugin's upstream."""
