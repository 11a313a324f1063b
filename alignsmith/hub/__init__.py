"""The embedded, file-backed Hub server and the helpers that point clients at it."""
