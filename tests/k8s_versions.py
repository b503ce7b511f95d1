"""The Kubernetes minor versions podfn claims to support (docs/deploy.md says the same).

Pod manifests (tests/test_manifest.py) and every chart manifest
(tests/test_chart.py) are validated, strict, against each one's JSON schemas.
"""

SUPPORTED = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0"]
