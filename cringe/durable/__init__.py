"""What keeps a long run's files trustworthy: atomic writes and a full disk named (files), complete-or-absent
checks (integrity), one process per run directory (runlock), signals turned into a clean stop (interrupt), and a
judge's answers kept as they arrive (answerlog). A reader of the algorithm can skip this package."""
