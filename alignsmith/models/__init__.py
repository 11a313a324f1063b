"""Models shared by every stage: pinning them to commits, loading them, and tiny offline ones."""
