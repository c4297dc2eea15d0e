"""recovery-drills: prove that backups restore, every month and on every CI run.

The top level holds the face (`cli`, `plugin`) and the drill's record (`record`); the parts
live in packages, each of whose docstrings says what it is and what it may import
(README.md, "Architecture"). `drills.catalog` is the catalog's old path, kept for users.
"""

__version__ = "0.1.0"
