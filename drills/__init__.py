"""recovery-drills: prove that backups restore, every month and on every CI run."""

__version__ = "0.1.0"
