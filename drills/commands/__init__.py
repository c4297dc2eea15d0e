"""The face: one module per subcommand of `drill` (run, demo, status, backup, restore,
runbook, heartbeat, report, init), each with its options and its exit codes.

It may import every part of the library; only `drills.cli` imports it.
"""
