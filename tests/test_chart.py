"""The Helm chart, rendered and linted by Helm's own SDK (no helm binary).

Every rendered manifest validates (strict) against the Kubernetes JSON
schemas of each version we claim; the security posture is asserted on what
renders, not on what the templates look like; values.schema.json rejects
nonsense (one test per rule).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from k8s_versions import SUPPORTED
from podfn.spec import validate as validate_spec
from podfn_platform.kube.manifest import PodSettings, build_pod

CHART = Path(__file__).resolve().parents[1] / "charts" / "podfn"
RELEASE, NAMESPACE = "podfn", "platform"
DB_URL = "postgresql://podfn:s3cret@db.example:5432/podfn"

# Value sets a platform team would plausibly install with.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "minimal": {"database": {"url": DB_URL}},
    "existing-secrets": {
        "database": {"existingSecret": "pg-credentials", "existingSecretKey": "dsn"},
        "auth": {"existingSecret": "podfn-token"},
        "runtime": {"namespace": {"name": "jobs", "create": False},
                    "networkPolicy": {"databaseCIDRs": ["10.0.5.0/24"], "databasePort": 6432}},
    },
    "in-cluster-postgres": {"postgresql": {"enabled": True, "auth": {"password": "trying-it-out-1"}}},
    "customized": {
        "database": {"url": DB_URL},
        "auth": {"token": "a-token-of-at-least-16"},
        "image": {"repository": "registry.example/podfn/platform", "tag": "0.1.0-rc1"},
        "imagePullSecrets": [{"name": "regcred"}],
        "api": {"replicas": 3, "workers": 4, "threads": 8, "port": 9000,
                "service": {"type": "LoadBalancer", "port": 443},
                "nodeSelector": {"pool": "system"},
                "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}]},
        "controller": {"replicas": 3, "metricsPort": 0, "maxConcurrency": 200},
        "runtime": {"namespace": {"name": NAMESPACE, "create": False},
                    "networkPolicy": {"enabled": False}},
        "config": {"PODFN_MAX_DISRUPTIONS": "5", "PODFN_RECONCILE_SECONDS": 30},
        "logLevel": "DEBUG",
    },
}


def render(values: dict[str, Any] | None = None, **opts: Any) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, **opts)  # type: ignore[no-any-return]


def manifests(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(render(values, is_install=True).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, manifests(VALUE_SETS[request.param])


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = find(docs, kind, name)
    return doc


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def settings_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", "podfn-settings")["data"]
    return data


# -- Helm: render and lint --------------------------------------------------


def test_default_values_name_the_missing_database() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"set database\.url, database\.existingSecret"):
        render()


@pytest.mark.parametrize("values", [{}, *VALUE_SETS.values()], ids=["defaults", *VALUE_SETS])
def test_lint_reports_no_errors(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{SUPPORTED[0]}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_value_set_renders_the_whole_platform(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "Role",
            "RoleBinding", "Job"} <= kinds
    assert {d["metadata"]["name"] for d in find(docs, "Deployment")} == {"podfn-api",
                                                                       "podfn-controller"}
    assert not {"ClusterRole", "ClusterRoleBinding"} & kinds
    assert ("StatefulSet" in kinds) == (name == "in-cluster-postgres")


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_manifest_validates_strict_against_the_kubernetes_schemas(
        version: str, rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


# -- Deployments ------------------------------------------------------------


def test_api_deployment_runs_gunicorn_with_probes_and_resources() -> None:
    docs = manifests(VALUE_SETS["minimal"])
    api = one(docs, "Deployment", "podfn-api")
    assert api["spec"]["replicas"] == 2
    [container] = api["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["podfn", "serve"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    service = one(docs, "Service", "podfn-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]


def test_controller_runs_two_replicas_with_the_kubernetes_launcher() -> None:
    docs = manifests(VALUE_SETS["minimal"])
    controller = one(docs, "Deployment", "podfn-controller")
    assert controller["spec"]["replicas"] == 2
    [container] = controller["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["podfn", "controller"]
    settings = settings_of(docs)
    assert settings["PODFN_LAUNCHER"] == "kubernetes"
    assert settings["PODFN_NAMESPACE"] == "podfn-runtime"
    assert settings["PODFN_HOST"] == "0.0.0.0"


def test_settings_are_valid_podfn_settings() -> None:
    from podfn.settings import Settings

    docs = manifests(VALUE_SETS["customized"])
    settings = Settings.from_env(settings_of(docs))
    assert (settings.port, settings.workers, settings.threads) == (9000, 4, 8)
    assert settings.max_disruptions == 5 and settings.reconcile_seconds == 30
    assert settings.log_level == "DEBUG" and settings.namespace == NAMESPACE


def test_database_url_and_token_only_in_secrets() -> None:
    docs = manifests(VALUE_SETS["customized"])
    for doc in docs:
        if doc["kind"] != "Secret":
            assert "s3cret" not in yaml.safe_dump(doc)
            assert "a-token-of-at-least-16" not in yaml.safe_dump(doc)
    for name in ("podfn-api", "podfn-controller"):
        [container] = one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["PODFN_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "podfn-database", "key": "platform-url"}
    [platform_secret] = find(docs, "Secret", "podfn-database")
    platform_url = base64.b64decode(platform_secret["data"]["platform-url"]).decode()
    password = base64.b64decode(platform_secret["data"]["platform-password"]).decode()
    # API and controller connect as the platform role, not as the owner in database.url.
    assert platform_url == f"postgresql://podfn_platform:{password}@db.example:5432/podfn"
    token = one(docs, "Secret", "podfn-api-token")
    assert base64.b64decode(token["data"]["token"]).decode() == "a-token-of-at-least-16"


def test_existing_secrets_are_used_not_created() -> None:
    docs = manifests(VALUE_SETS["existing-secrets"])
    assert find(docs, "Secret") == []
    [api] = one(docs, "Deployment", "podfn-api")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in api["env"]}
    assert env == {"PODFN_DATABASE_URL": {"name": "pg-credentials", "key": "dsn"},
                   "PODFN_API_TOKEN": {"name": "podfn-token", "key": "token"}}
    assert "create the Secret \"podfn-runtime-database\"" in render(
        VALUE_SETS["existing-secrets"])["podfn/templates/NOTES.txt"]


def test_generated_token_is_long_and_notes_say_how_to_read_it() -> None:
    out = render(VALUE_SETS["minimal"])
    [token] = [d for d in yaml.safe_load_all(out["podfn/templates/secrets.yaml"])
               if d and d["metadata"]["name"] == "podfn-api-token"]
    assert len(base64.b64decode(token["data"]["token"])) >= 32
    notes = out["podfn/templates/NOTES.txt"]
    assert "kubectl -n platform get secret podfn-api-token" in notes
    assert "port-forward svc/podfn-api" in notes


def test_runtime_pods_read_the_runtime_roles_url_never_the_platforms() -> None:
    for name in ("minimal", "in-cluster-postgres"):
        docs = manifests(VALUE_SETS[name])
        settings = settings_of(docs)
        [runtime_secret] = [s for s in find(docs, "Secret", settings["PODFN_RUNTIME_DATABASE_SECRET"])
                            if s["metadata"]["namespace"] == settings["PODFN_NAMESPACE"]]
        url = base64.b64decode(runtime_secret["data"]["url"]).decode()
        password = base64.b64decode(runtime_secret["data"]["password"]).decode()
        assert url.startswith(f"postgresql://podfn_runtime:{password}@")
        assert url.endswith(":5432/podfn")
        [platform_secret] = [s for s in find(docs, "Secret", "podfn-database")
                             if s["metadata"]["namespace"] == NAMESPACE]
        platform_url = base64.b64decode(platform_secret["data"]["url"]).decode()
        assert platform_url not in yaml.safe_dump(runtime_secret)
        assert settings["PODFN_RUNTIME_DATABASE_SECRET"] != "podfn-database"
        # The migration Job sets that password on the role it creates.
        [migrate] = one(docs, "Job", "podfn-migrate")["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in migrate["env"]}
        assert env["PODFN_RUNTIME_ROLE"]["value"] == "podfn_runtime"
        ref = env["PODFN_RUNTIME_ROLE_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert base64.b64decode(platform_secret["data"][ref["key"]]).decode() == password


def test_in_cluster_postgres_is_a_statefulset_with_a_volume() -> None:
    docs = manifests(VALUE_SETS["in-cluster-postgres"])
    sts = one(docs, "StatefulSet", "podfn-postgresql")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    [db_secret] = [s for s in find(docs, "Secret", "podfn-database")
                   if s["metadata"]["namespace"] == NAMESPACE]
    url = base64.b64decode(db_secret["data"]["url"]).decode()
    assert url == ("postgresql://podfn:trying-it-out-1@podfn-postgresql.platform.svc:5432/podfn")
    job = one(docs, "Job", "podfn-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook() -> None:
    docs = manifests(VALUE_SETS["minimal"])
    job = one(docs, "Job", "podfn-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["podfn", "migrate"]
    # A hook runs before the release's other objects exist: it may name none of them.
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # The Secret it reads exists before it: a hook of lower weight.
    [db_secret] = [s for s in find(docs, "Secret", "podfn-database")
                   if s["metadata"]["namespace"] == NAMESPACE]
    assert db_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(db_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        annotations["helm.sh/hook-weight"])


# -- Security posture ---------------------------------------------------------


ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """The checks of the "restricted" Pod Security Standard (baseline included), for one pod spec."""
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        if spec.get(key) and key != "hostUsers":
            problems.append(f"{key} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} is {kinds}")
    pod_ctx = spec.get("securityContext", {})
    if pod_ctx.get("sysctls"):
        problems.append("sysctls")
    if (pod_ctx.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t",
                                                                  "container_init_t"):
        problems.append("pod SELinux type")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for c in containers:
        ctx = c.get("securityContext", {})
        where = f"container {c['name']}"
        if ctx.get("privileged"):
            problems.append(f"{where} is privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where} may escalate privileges")
        if "ALL" not in (ctx.get("capabilities") or {}).get("drop", []):
            problems.append(f"{where} does not drop ALL capabilities")
        if set((ctx.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where} adds capabilities")
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
            problems.append(f"{where} may run as root")
        if ctx.get("runAsNonRoot") is False:
            problems.append(f"{where} sets runAsNonRoot false")
        if 0 in (ctx.get("runAsUser"), pod_ctx.get("runAsUser")):
            problems.append(f"{where} runs as uid 0")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where} has seccomp {seccomp}")
        if ctx.get("procMount", "Default") != "Default":
            problems.append(f"{where} procMount")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{where} uses a hostPort")
    return problems


def test_every_chart_pod_passes_the_restricted_profile(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    specs = dict(pod_specs(docs))
    assert specs
    for where, spec in specs.items():
        assert restricted_violations(spec) == [], where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        for c in spec["containers"]:
            assert c["securityContext"]["runAsNonRoot"] is True, where
            assert c["securityContext"]["privileged"] is False, where
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where


def test_the_checker_catches_what_it_checks() -> None:
    ok = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
          "containers": [{"name": "c", "securityContext": {
              "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}
    assert restricted_violations(ok) == []
    bad = yaml.safe_load(yaml.safe_dump(ok))
    bad["hostNetwork"] = True
    bad["volumes"] = [{"name": "h", "hostPath": {"path": "/"}}]
    bad["containers"][0]["securityContext"].update(privileged=True, runAsUser=0,
                                                    capabilities={"add": ["SYS_ADMIN"]})
    bad["containers"][0]["ports"] = [{"containerPort": 80, "hostPort": 80}]
    assert len(restricted_violations(bad)) == 7


def test_controller_role_is_exactly_pods_and_pod_logs_in_the_runtime_namespace(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    settings = settings_of(docs)
    [role] = find(docs, "Role")
    assert role["metadata"]["namespace"] == settings["PODFN_NAMESPACE"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"],
         "verbs": ["create", "get", "list", "watch", "delete", "patch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    ]
    [binding] = find(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == settings["PODFN_NAMESPACE"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    controller = one(docs, "Deployment", "podfn-controller")["spec"]["template"]["spec"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": NAMESPACE,
                                    "name": controller["serviceAccountName"]}]


def test_the_api_has_no_kubernetes_permissions(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    api = one(docs, "Deployment", "podfn-api")["spec"]["template"]["spec"]
    assert api["automountServiceAccountToken"] is False
    account = one(docs, "ServiceAccount", api["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    bound = [s["name"] for b in find(docs, "RoleBinding") for s in b["subjects"]]
    assert api["serviceAccountName"] not in bound


def test_runtime_namespace_enforces_restricted_when_the_chart_creates_it() -> None:
    docs = manifests(VALUE_SETS["minimal"])
    namespace = one(docs, "Namespace", "podfn-runtime")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert find(manifests(VALUE_SETS["existing-secrets"]), "Namespace") == []


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_the_launchers_pod_for_this_install_passes_the_restricted_profile(name: str) -> None:
    """The pod the controller would create, from the settings the chart gives it."""
    docs = manifests(VALUE_SETS[name])
    settings = settings_of(docs)
    pod = build_pod(call_id="0f3a9c2e5b7d4e1f", attempt=1, function_name="m.f",
                    spec=validate_spec({"cpu": "1", "memory": "1Gi", "timeout": 60}),
                    client_python="3.12.3",
                    settings=PodSettings(namespace=settings["PODFN_NAMESPACE"],
                                         runtime_image=settings["PODFN_RUNTIME_IMAGE"],
                                         database_secret=settings["PODFN_RUNTIME_DATABASE_SECRET"]))
    assert restricted_violations(pod["spec"]) == []
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["containers"][0]["image"] == "ghcr.io/podfn/runtime:py3.12"
    for version in SUPPORTED:
        kubernetes_validate.validate(pod, version, strict=True)
    # The NetworkPolicy, when on, selects exactly these pods.
    for policy in find(docs, "NetworkPolicy"):
        assert policy["metadata"]["namespace"] == pod["metadata"]["namespace"]
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items()


def test_runtime_network_policy_allows_only_postgres_dns_and_the_api() -> None:
    [policy] = find(manifests(VALUE_SETS["existing-secrets"]), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
    dns, postgres, api = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"}
    assert postgres == {"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}],
                        "ports": [{"protocol": "TCP", "port": 6432}]}
    assert api["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert api["ports"] == [{"protocol": "TCP", "port": 8080}]
    [in_cluster] = find(manifests(VALUE_SETS["in-cluster-postgres"]), "NetworkPolicy")
    assert in_cluster["spec"]["egress"][1]["to"][0]["podSelector"]["matchLabels"][
        "app.kubernetes.io/component"] == "postgresql"
    assert find(manifests(VALUE_SETS["customized"]), "NetworkPolicy") == []


# -- values.schema.json -------------------------------------------------------


BAD_VALUES = [
    ({"bogus": 1}, "additional properties 'bogus'"),
    ({"api": {"replicas": 0}}, "/api/replicas"),
    ({"api": {"replicas": "2"}}, "/api/replicas"),
    ({"api": {"workers": 0}}, "/api/workers"),
    ({"api": {"threads": -1}}, "/api/threads"),
    ({"api": {"port": 70000}}, "/api/port"),
    ({"api": {"maxWaitSeconds": 0}}, "/api/maxWaitSeconds"),
    ({"api": {"service": {"type": "Ingress"}}}, "/api/service/type"),
    ({"api": {"resources": {"limits": {"memory": "lots"}}}}, "/api/resources/limits/memory"),
    ({"api": {"resources": {"request": {"cpu": "1"}}}}, "/api/resources"),
    ({"controller": {"replicas": 0}}, "/controller/replicas"),
    ({"controller": {"maxConcurrency": 0}}, "/controller/maxConcurrency"),
    ({"controller": {"metricsPort": 65536}}, "/controller/metricsPort"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"repository": "has space/x"}}, "/image/repository"),
    ({"image": {"tag": "-bad"}}, "/image/tag"),
    ({"database": {"url": "mysql://db/x"}}, "/database/url"),
    ({"database": {"existingSecret": "Not_A_Name"}}, "/database/existingSecret"),
    ({"auth": {"token": "short"}}, "/auth/token"),
    ({"runtime": {"namespace": {"name": "Bad Namespace"}}}, "/runtime/namespace/name"),
    ({"runtime": {"namespace": {"name": "x" * 64}}}, "/runtime/namespace/name"),
    ({"runtime": {"databaseSecret": ""}}, "/runtime/databaseSecret"),
    ({"runtime": {"networkPolicy": {"databaseCIDRs": ["10.0.0.0"]}}}, "/runtime/networkPolicy/databaseCIDRs"),
    ({"runtime": {"networkPolicy": {"enabled": "yes"}}}, "/runtime/networkPolicy/enabled"),
    ({"config": {"MAX_DISRUPTIONS": "5"}}, "invalid propertyName 'MAX_DISRUPTIONS'"),
    ({"config": {"PODFN_LAUNCHER": "local"}}, "invalid propertyName 'PODFN_LAUNCHER'"),
    ({"logLevel": "verbose"}, "/logLevel"),
    ({"postgresql": {"enabled": "true"}}, "/postgresql/enabled"),
    ({"postgresql": {"auth": {"password": "short"}}}, "/postgresql/auth/password"),
    ({"postgresql": {"auth": {"password": "has'quote@and:colon"}}}, "/postgresql/auth/password"),
    ({"postgresql": {"storage": {"size": "8GB"}}}, "/postgresql/storage/size"),
    ({"serviceAccount": {"api": {"name": "UPPER"}}}, "/serviceAccount/api/name"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES,
                         ids=[w + ("-" + str(i)) for i, (_, w) in enumerate(BAD_VALUES)])
def test_schema_rejects(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(values)
    assert where in str(info.value)
    # ... and so does an install (render validates first).
    with pytest.raises(helm.HelmValuesError):
        render({**values, "database": {"url": DB_URL}} if "database" not in values else values)


def test_schema_accepts_every_value_set_and_the_defaults() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({})
        for values in VALUE_SETS.values():
            chart.validate_schema(values)
