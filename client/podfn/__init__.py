"""podfn: Python functions on Kubernetes, one pod per call.

    from podfn import remote

    @remote(cpu="250m", memory="256Mi", timeout=60)
    def add(a, b):
        return a + b

    add.remote(2, 3)          # 5, computed in its own pod (or process)
"""

from podfn.call import Call, Logs
from podfn.errors import (
    CallCancelled,
    CallError,
    CallFailed,
    CallTimeout,
    ConfigurationError,
    InvalidSpec,
    NotAuthorized,
    NotFound,
    PlatformError,
    PlatformUnreachable,
    PodfnError,
    RemoteTraceback,
    ResultTimeout,
    Unpicklable,
)
from podfn.function import DeployedFunction, Function, remote
from podfn.streaming import LogLine

__version__ = "0.1.0"

__all__ = [
    "Call",
    "CallCancelled",
    "CallError",
    "CallFailed",
    "CallTimeout",
    "ConfigurationError",
    "DeployedFunction",
    "Function",
    "InvalidSpec",
    "LogLine",
    "Logs",
    "NotAuthorized",
    "NotFound",
    "PlatformError",
    "PlatformUnreachable",
    "PodfnError",
    "RemoteTraceback",
    "ResultTimeout",
    "Unpicklable",
    "remote",
]
