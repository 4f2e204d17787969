"""Who may call what: short-lived realtime tokens (API keys come later)."""
