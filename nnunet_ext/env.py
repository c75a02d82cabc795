"""``nnUNetv2_ext_env``: print the shell line that lets stock nnU-Net commands find nnunet-ext's trainers."""
import argparse
import os
import shlex

from nnunet_ext import trainer_modules_dir


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
