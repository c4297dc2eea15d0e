"""The built-in drills, one pytest test per kind, collected by `drill run`."""
