"""The one exception type for problems a user can fix: bad data, bad config, missing files."""


class PipelineError(Exception):
    """Raised with a message that names the problem and the fix; the CLI prints it without a traceback."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\nFix: {fix}")
