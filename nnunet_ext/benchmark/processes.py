"""Child processes of the benchmark (nnU-Net's commands), stopped together with it."""
import os
import signal
import subprocess
import sys
import threading

# children started by run_child and still running: stop_children() stops them from another thread (the benchmark's
# main thread, when runs train side by side in worker threads, which never see a signal's exception)
_running = set()
_running_lock = threading.Lock()


def run_child(args: list, env: dict, log, pass_fds: tuple = (), grace_seconds: float = 30.0) -> int:
    """Run a command to completion and return its exit code; stop it, with every process it started, when this
    process is stopped.

    nnU-Net's training starts augmentation workers. A benchmark stopped with Ctrl-C or ``kill`` would otherwise
    leave the training running unseen, writing into its results folder. The child runs in a session of its own;
    on any exception here (KeyboardInterrupt, the SystemExit of SIGTERM) its process group gets SIGTERM, then
    SIGKILL after ``grace_seconds``, and the exception goes on.
    """
    group = hasattr(os, "killpg")
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds,
                               start_new_session=group)
    with _running_lock:
        _running.add(process)
    try:
        return process.wait()
    except BaseException:
        _stop(process, group, grace_seconds)
        raise
    finally:
        with _running_lock:
            _running.discard(process)


def stop_children(grace_seconds: float = 30.0):
    """Stop every child that run_child is waiting for in any thread, with every process it started."""
    with _running_lock:
        running = list(_running)
    group = hasattr(os, "killpg")
    for process in running:
        _stop(process, group, grace_seconds)


def _stop(process: subprocess.Popen, group: bool, grace_seconds: float):
    def send(sig):
        try:
            os.killpg(process.pid, sig) if group else process.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    send(signal.SIGKILL if group else signal.SIGTERM)  # the workers too, even when the leader has exited
    process.wait()


def exit_on_sigterm(signum, frame):
    # turn ``kill PID`` into an exception, so that run_child stops the running training before this process exits
    sys.exit(128 + signum)
