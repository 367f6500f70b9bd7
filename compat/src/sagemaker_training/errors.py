"""The reference's exception types, with its messages.

Framework toolkits catch these by class (the PyTorch toolkit catches
``ExecuteUserScriptError``), and tests compare their text, so the class tree and
``str()`` follow the reference. Every process error also carries ``exit_status``: the
status smtk gives the job for it (the script's own status, or 128 + signal), which
``python -m smtk.launch.call`` exits with when the error escapes a
``SAGEMAKER_TRAINING_MODULE`` function (the reference always exited 1).
"""

from __future__ import annotations

import textwrap
from typing import Any


class ClientError(Exception):
    """An error caused by the job's configuration or the user's code."""

    #: The status smtk ends the job with for this error (see the module docstring).
    exit_status: int = 1


class SMTrainingCompilerConfigurationError(Exception):
    """The SageMaker Training Compiler is configured in a way that cannot work."""


class _CalledProcessError(ClientError):
    """A process (pip, the user's entry point) ended with a non-zero status.

    ``return_code`` is kept as a string, as in the reference; ``exit_status`` is the
    integer status smtk ends the job with.
    """

    def __init__(
        self,
        cmd: Any,
        return_code: Any = None,
        output: Any = None,
        info: Any = None,
        *,
        exit_status: int | None = None,
    ) -> None:
        self.return_code = str(return_code)
        self.cmd = cmd
        self.output = output
        self.extra_info = info
        self.exit_status = exit_status if exit_status is not None else _status_of(return_code)
        super().__init__()

    def __str__(self) -> str:
        if isinstance(self.output, bytes):
            error_msg = self.output.decode("utf-8", errors="replace")
        else:
            error_msg = str(self.output) if self.output else ""
        name = type(self).__name__
        lines = [f"{name}:", f"ExitCode {self.return_code}", f'ErrorMessage "{error_msg}"']
        if self.extra_info is not None:
            lines.append(f'ExtraInfo "{self.extra_info}"')
        lines.append(f'Command "{self.cmd}"')
        return "\n".join(lines).strip()


class InstallModuleError(_CalledProcessError):
    """Installing the user's package (``pip install .``) failed."""


class InstallRequirementsError(_CalledProcessError):
    """Installing the code dir's ``requirements.txt`` failed."""


class ImportModuleError(ClientError):
    """The user's module could not be imported."""


class ExecuteUserScriptError(_CalledProcessError):
    """The user's entry point ended with a non-zero status or a signal."""


class ChannelDoesNotExistError(Exception):
    """A channel name that the job does not have."""

    def __init__(self, channel_name: str) -> None:
        super().__init__(f"Channel {channel_name} is not a valid channel")


class UnsupportedFormatError(Exception):
    """A content type the encoders do not know."""

    def __init__(self, content_type: str, **kwargs: Any) -> None:
        self.message = textwrap.dedent(
            f"""Content type {content_type} is not supported by this framework.

            Please implement input_fn to to deserialize the request data or an output_fn to
            serialize the response. For more information, see the SageMaker Python SDK README."""
        )
        super().__init__(self.message, **kwargs)


def _status_of(return_code: Any) -> int:
    """The job's exit status for ``return_code``: itself when it is one, else 1."""
    try:
        status = int(return_code)
    except (TypeError, ValueError):
        return 1
    if status < 0:  # subprocess's "killed by signal -N"
        return 128 - status
    return status if 0 < status < 256 else 1
