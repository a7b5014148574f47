"""The agent layer: builds, their lifecycle, events and recovery."""
