"""The ``hardening`` subcommands, one module per family; ``cli.py`` registers each module's
``COMMANDS`` on the root group. Like ``cli.py`` they only present what ``jobs/`` and the core
modules return; ``shared`` holds what every command needs (consoles, settings, exit codes)."""
