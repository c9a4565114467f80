"""A module of the service's own code (below the base directory): never governed."""


def read(path):
    with open(path) as f:
        return f.read()
