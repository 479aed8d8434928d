"""The long-running agent: `agent` puts its parts together (the queue and debounce, the retry
policy, restart backoff, reports on commits, previews, history, metrics, alerts, image updates);
the runtime's own watch runs beside them."""
