"""The one error type for bad input: the CLIs print it as one `error:` line and exit 2."""


class InputError(ValueError):
    """An input (an option, a combination, a cluster that cannot hold a trial) that cannot run.

    The message is one line that names what is wrong and what would work.
    """
