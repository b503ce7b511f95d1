"""The program each call's pod (or local process) runs: `python -m podfn_runtime`.

It depends only on cloudpickle and psycopg, so a runtime image stays small and
nothing of the platform's (Flask, the Kubernetes client) reaches user pods.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
