"""`podfn serve`'s gunicorn configuration: from settings, also loadable as a gunicorn config module."""

from __future__ import annotations

import json
import subprocess
import sys

from podfn.settings import Settings
from podfn_platform import gunicorn_conf
from podfn_platform.gunicorn_conf import ACCESS_LOG_FORMAT, GRACEFUL_TIMEOUT, options


def test_workers_threads_and_graceful_shutdown_come_from_settings() -> None:
    opts = options(Settings(host="0.0.0.0", port=9000, workers=3, threads=7, max_wait_seconds=45))
    assert opts["bind"] == "0.0.0.0:9000"
    assert (opts["workers"], opts["threads"]) == (3, 7)
    assert opts["worker_class"] == "podfn_platform.worker.PodfnWorker"
    assert opts["graceful_timeout"] == GRACEFUL_TIMEOUT
    assert opts["timeout"] > 45  # a long-poll is never killed as a stuck worker


def test_access_log_is_one_json_object_per_request_whatever_the_path() -> None:
    opts = options(Settings())
    assert opts["access_log_format"] == ACCESS_LOG_FORMAT
    logger_class = opts["logger_class"].rsplit(".", 1)[1]
    wrapper = getattr(gunicorn_conf, logger_class).atoms_wrapper_class
    # Fill the format the way gunicorn's Logger.access does.
    path = '/v1/calls/"quoted"\\back\nline\x00'
    atoms = wrapper({"h": "10.0.0.1", "m": "GET", "U": path, "q": "wait=5", "s": "200",
                     "B": 12, "D": 1500})
    record = json.loads(ACCESS_LOG_FORMAT % atoms)
    assert record == {"remote": "10.0.0.1", "method": "GET", "path": path, "query": "wait=5",
                      "status": "200", "bytes": "12", "duration_us": "1500"}


def test_loadable_as_a_gunicorn_config_module() -> None:
    code = (
        "from gunicorn.app.base import Application\n"
        "class A(Application):\n"
        "    def init(self, *a): pass\n"
        "    def load(self): pass\n"
        "app = A.__new__(A)\n"
        "from gunicorn.config import Config\n"
        "app.cfg = Config()\n"
        "cfg = app.get_config_from_module_name('podfn_platform.gunicorn_conf')\n"
        "print(cfg['workers'], cfg['threads'], cfg['bind'], cfg['graceful_timeout'])\n"
    )
    env = {"PODFN_WORKERS": "5", "PODFN_THREADS": "9", "PODFN_PORT": "8181", "PATH": "/usr/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["5", "9", "127.0.0.1:8181", str(GRACEFUL_TIMEOUT)]
