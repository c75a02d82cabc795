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


def check_setup(environ=None) -> None:
    """Raise a :class:`UserInputError` unless nnU-Net's own trainer lookup finds this package's trainers."""
    from nnunet_ext.errors import UserInputError

    environ = os.environ if environ is None else environ
    version = check_nnunet_version()
    value = environ.get("nnUNet_extTrainer", "")
    ours = trainer_modules_dir()
    entries = [e for e in value.split(os.pathsep) if e.strip()]
    fix = 'Run eval "$(nnUNetv2_ext_env)" in this shell (or put that line in ~/.bashrc).'
    if not entries:
        raise UserInputError(f"nnUNet_extTrainer is not set, so nnUNetv2_train and nnUNetv2_predict cannot find "
                             f"nnunet-ext's trainers. {fix}")
    if not any(os.path.abspath(e) == ours for e in entries):
        stale = [e for e in entries if not os.path.isdir(e)]
        raise UserInputError(
            f"nnUNet_extTrainer={value} does not list this installation's trainer folder {ours}"
            + (f" (and {stale} do not exist: perhaps an older or moved installation)" if stale else "")
            + f". {fix}")
    import contextlib
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:  # nnU-Net's own lookup, as nnUNetv2_train does it (it prints its search; keep that quiet)
        with contextlib.redirect_stdout(io.StringIO()):
            recursive_find_trainer_class_by_name("nnUNetTrainerMedContext")
    except Exception as e:
        raise UserInputError(f"nnU-Net's trainer lookup does not find nnUNetTrainerMedContext in {value} ({e}). "
                             f"Reinstall nnunet-ext, then {fix}") from None
    print(f"OK: nnunetv2 {version}; nnUNet_extTrainer lists {ours}; nnUNetv2_train finds nnunet-ext's trainers.")


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
    parser.add_argument("--check", action="store_true",
                        help="check that nnUNetv2_train in this shell finds nnunet-ext's trainers (and that the "
                             "nnunetv2 version is supported); say how to fix it if not")
    args = parser.parse_args(argv)
    if args.check:
        from nnunet_ext.errors import run_cli

        run_cli(check_setup, parser.prog)
        return
    if args.print_path:
        print(trainer_modules_dir())
        return
    value = extended_trainer_path(os.environ.get("nnUNet_extTrainer"))
    print(f"export nnUNet_extTrainer={shlex.quote(value)}")


if __name__ == "__main__":
    main()
