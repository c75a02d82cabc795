"""``nnUNetv2_ext_env``: print the shell line that lets stock nnU-Net commands find nnunet-ext's trainers."""
import argparse
import os
import shlex

from nnunet_ext import trainer_modules_dir


SUPPORTED_NNUNET = ((2, 8), (2, 9))  # >= 2.8, < 2.9: the trainer API this package overrides


def check_nnunet_version(installed: str | None = None) -> str:
    """Raise a :class:`UserInputError` unless the installed nnunetv2 is in the supported range.

    nnU-Net changed the trainer constructor, ``build_network_architecture``, its logger and ``load_checkpoint``
    between 2.3, 2.6, 2.7 and master; the trainers here override those, so another version fails in obscure ways.

    Args:
        installed: version string to check (default: the installed ``nnunetv2``).

    Returns:
        The checked version string.
    """
    from importlib import metadata

    from nnunet_ext.errors import UserInputError

    if installed is None:
        installed = metadata.version("nnunetv2")
    parts = []
    for piece in installed.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    low, high = SUPPORTED_NNUNET
    if not low <= tuple(parts) < high:
        raise UserInputError(
            f"nnunet-ext supports nnunetv2 >= {low[0]}.{low[1]} and < {high[0]}.{high[1]}, but nnunetv2 {installed} "
            f"is installed. Install a supported version: pip install 'nnunetv2>={low[0]}.{low[1]},<{high[0]}."
            f"{high[1]}'.")
    return installed


def extended_trainer_path(current: str | None = None) -> str:
    """Return ``nnUNet_extTrainer`` with this package's trainer folder appended.

    The user's own entries are kept in front and in order (appended to, never replaced); the folder is
    not added twice, so evaluating the line repeatedly is harmless.

    Args:
        current: the variable's present value (``None`` or empty when unset).

    Returns:
        The new value, ``os.pathsep``-separated.
    """
    ours = trainer_modules_dir()
    entries = [e for e in (current or "").split(os.pathsep) if e.strip()]
    if not any(os.path.abspath(e) == ours for e in entries):
        entries.append(ours)
    return os.pathsep.join(entries)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_ext_env",
        description="Print the shell line that makes nnunet-ext's trainers visible to nnUNetv2_train and "
                    "nnUNetv2_predict (through nnU-Net's nnUNet_extTrainer variable). Use it as\n"
                    '  eval "$(nnUNetv2_ext_env)"\n'
                    "in your shell or in ~/.bashrc. An existing nnUNet_extTrainer value is kept; this package's "
                    "trainer folder is appended to it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--print-path", action="store_true",
                        help="print only the trainer folder of this installation, not an export line")
    args = parser.parse_args(argv)
    if args.print_path:
        print(trainer_modules_dir())
        return
    value = extended_trainer_path(os.environ.get("nnUNet_extTrainer"))
    print(f"export nnUNet_extTrainer={shlex.quote(value)}")


if __name__ == "__main__":
    main()
