"""BEANS-Zero data, prompts, scoring and sweeps; imports naturelm_core, never the app."""
