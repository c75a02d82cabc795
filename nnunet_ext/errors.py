"""User-facing errors: what is wrong, where, and how to fix it."""


class UserInputError(RuntimeError):
    """Bad input from the user (a dataset, a plans file, a configuration, a flag).

    Commands print the message without a traceback; trainers let it propagate, so that ``nnUNetv2_train``
    stops with the message as its last line.
    """


def run_cli(main_function, prog: str):
    """Run ``main_function`` and turn a :class:`UserInputError` into a one-paragraph message and exit code 2."""
    import sys

    try:
        return main_function()
    except UserInputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1 (argparse then reports a bad value with the option's name)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
