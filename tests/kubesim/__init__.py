"""kubesim: a Kubernetes API stand-in for the podfn test suite.

A real HTTP server that the official ``kubernetes`` Python client talks to
through a kubeconfig, implementing the pod subset of the API (pods with
/status and /log, secrets, list/watch with selectors, resourceVersions, 410,
bookmarks), a scheduler+kubelet stand-in that runs each pod's first container
as a local process, and fault injection. Every simplification relative to a
real cluster is listed in the docstring of the module that makes it:
store.py, api.py, validation.py, patch.py, selectors.py, server.py,
kubelet.py, faults.py.

Usage::

    with KubeSim(base_env={"PATH": os.environ["PATH"]}) as sim:
        cfg = sim.kubeconfig(tmp_path / "kubeconfig")
        ...  # kubernetes.config.load_kube_config(config_file=str(cfg))
        sim.faults.oom_kill("default", "my-pod")

or as a process: ``python tests/kubesim --kubeconfig PATH`` (prints the URL).
"""

from .errors import ApiError
from .faults import Faults
from .kubelet import KubeletConfig
from .sim import KubeSim
from .store import Event, Store

__all__ = ["ApiError", "Event", "Faults", "KubeSim", "KubeletConfig", "Store"]
