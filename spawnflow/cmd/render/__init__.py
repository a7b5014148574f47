"""What the CLI prints: terminal-safe text and tables, times and durations, a build's
summary and steps, event payloads, and the timeline (layout apart from the SVG/HTML
writers)."""
