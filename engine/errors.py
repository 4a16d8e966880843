"""The base of every error a user can act on; the CLI prints these as one line."""


class SiftError(Exception):
    pass
