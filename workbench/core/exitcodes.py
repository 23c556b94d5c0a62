"""The exit codes of ``workbench`` commands: what a script, a scheduler's requeue logic, a CI job or the window
(watching a training process it started) can rely on. A run's exit code is its final status."""

EXIT_OK = 0  # the command did what it was asked; a run reached its target and saved its adapter
EXIT_BUG = 1  # an unexpected error (a bug): one line on screen, the traceback in a log file
EXIT_USER = 2  # bad input or a failed run, with a message that names the problem and a hint
EXIT_STOPPED = 3  # a run stopped before its target (Ctrl-C, SIGTERM, `workbench control stop`): resumable
EXIT_INTERRUPTED = 130  # aborted (a second Ctrl-C): nothing was saved beyond the last checkpoint
