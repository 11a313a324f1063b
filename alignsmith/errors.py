"""The one base of every error a user can fix from its message alone.

Bad recipes, malformed records, missing models or revisions, refused publishes: each area raises a
subclass of :class:`AlignsmithError` whose message names the file, record, field or repo. The CLI
prints these on one line; any other exception is a bug and keeps its traceback.
"""


class AlignsmithError(Exception):
    """Bad input, a missing resource or a refused operation, described for the person who can fix it."""
