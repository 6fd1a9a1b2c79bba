"""The ``selfsup`` command line: one module per command group, all through :mod:`selfsup.cli.main`."""
