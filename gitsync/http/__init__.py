"""The agent's HTTP face: the API, webhooks, metrics and the dashboard."""
