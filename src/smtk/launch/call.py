"""``python -m smtk.launch.call pkg.mod:function``: the ``SAGEMAKER_TRAINING_MODULE`` runner.

The reference imports the module and calls the function inside its own process; smtk
runs it as a child process instead, so a function entry point gets the same signal
forwarding, log streaming and failure report as a script. The function is called with
no arguments, and, as in the reference, what it returns is ignored: the job succeeds
when the function returns, whatever the value. ``SystemExit`` passes through
(``sys.exit(3)`` fails the job with status 3); any other exception prints its traceback
and exits with status 1, or with its ``exit_status`` attribute when it has an integer
one from 1 to 255 (the ``sagemaker_training`` compatibility layer's errors carry the
user's script's status there).

A module or function that does not exist is a configuration error, exit status 2, in
both cases: a module the function's own code fails to import is the user code's
``ModuleNotFoundError`` (status 1, with its traceback).
"""

from __future__ import annotations

import importlib
import sys
import traceback

from smtk import log

#: Exit status for a module or function that does not exist (a configuration error).
NOT_FOUND = 2


def main(argv: list[str]) -> int:
    if len(argv) != 1 or ":" not in argv[0]:
        log.write("stderr", "usage: python -m smtk.launch.call package.module:function")
        return NOT_FOUND
    module_name, _, function_name = argv[0].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            log.write(
                "stderr",
                f"smtk: SAGEMAKER_TRAINING_MODULE={argv[0]}: no module named {missing!r} "
                "(in the code dir, or installed by requirements.txt)",
            )
            return NOT_FOUND
        raise  # the user's module imports something missing: its own error
    function = getattr(module, function_name, None)
    if not callable(function):
        log.write(
            "stderr",
            f"smtk: SAGEMAKER_TRAINING_MODULE={argv[0]}: {module_name!r} has no callable named "
            f"{function_name!r}",
        )
        return NOT_FOUND
    try:
        function()  # the return value is ignored, as the reference does
    except Exception as exc:
        # An exception that carries the job's exit status (the sagemaker_training
        # compatibility layer's ExecuteUserScriptError: the user's script exited with N, or
        # was stopped) ends the job with that status instead of Python's 1.
        status = getattr(exc, "exit_status", None)
        if type(status) is not int or not 0 < status < 256:
            raise
        log.write("stderr", traceback.format_exc().rstrip("\n"))
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
