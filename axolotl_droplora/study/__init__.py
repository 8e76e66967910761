"""The replication and regime studies (research code on top of the package; nothing imports it):
arms and configs (arms.py), the runner (run.py), the reports (report.py) and their statistics
(stats.py)."""
