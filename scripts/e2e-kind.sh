#!/usr/bin/env bash
# End-to-end on a kind cluster: build the image, install the chart, run
# `kvmesh sim` as a stand-in vLLM Deployment, apply a pool, send requests
# through the router Service, check routing and the pool's status.
#
# NOT run in CI: this project's machines have no Docker engine and no kind.
# Needs docker, kind, kubectl and helm on PATH. Leaves the cluster running
# (delete it with `kind delete cluster --name kvmesh-e2e`).
#
#   scripts/e2e-kind.sh [cluster-name]
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER="${1:-kvmesh-e2e}"
NS=inference
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== image"
docker build -t kvmesh:e2e .
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"
kind load docker-image kvmesh:e2e --name "$CLUSTER"

echo "== chart"
helm upgrade --install kvmesh charts/kvmesh -n kvmesh-system --create-namespace \
  --set image.repository=kvmesh --set image.tag=e2e --set image.pullPolicy=Never --wait

echo "== stand-in engines: 3 pods of kvmesh sim"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "$NS" -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: sim}
spec:
  replicas: 3
  selector: {matchLabels: {app: sim}}
  template:
    metadata: {labels: {app: sim}}
    spec:
      containers:
        - name: sim
          image: kvmesh:e2e
          imagePullPolicy: Never
          args: [sim, --replicas=1, --listen=0.0.0.0:8000]
          ports: [{containerPort: 8000}]
          readinessProbe: {httpGet: {path: /health, port: 8000}}
EOF
kubectl -n "$NS" rollout status deploy/sim --timeout=180s

echo "== pool"
kubectl apply -f - <<EOF
apiVersion: kvmesh.io/v1alpha1
kind: KvCachePool
metadata: {name: sim, namespace: $NS}
spec:
  selector: {matchLabels: {app: sim}}
  port: 8000
  nodeCache: {memory: 256Mi}
  router: {replicas: 1}
EOF
kubectl -n "$NS" wait kvp/sim --for=condition=RouterReady --timeout=180s
for _ in $(seq 60); do
  [ "$(kubectl -n "$NS" get kvp sim -o jsonpath='{.status.endpoints}')" = 3 ] && break
  sleep 2
done
kubectl -n "$NS" get kvp sim
[ "$(kubectl -n "$NS" get kvp sim -o jsonpath='{.status.endpoints}')" = 3 ] || fail "pool does not see 3 endpoints"

echo "== requests through the router Service"
kubectl -n "$NS" port-forward svc/sim-router 18080:8080 >/dev/null &
PF=$!
trap 'kill $PF' EXIT
for _ in $(seq 30); do curl -fs -o /dev/null localhost:18080/v1/models && break; sleep 1; done
ask() { # prints "replica reason" of one chat request for conversation $1
  curl -fs -D - -o /dev/null localhost:18080/v1/chat/completions -H 'content-type: application/json' \
    -d "{\"model\":\"sim-llama-3.1-8b\",\"max_tokens\":8,\"messages\":[{\"role\":\"user\",\"content\":\"conversation $1: explain prefix caching, block hashes and consistent hashing in detail\"}]}" \
    | tr -d '\r' | awk 'tolower($1)=="x-kvmesh-replica:"{r=$2} tolower($1)=="x-kvmesh-reason:"{s=$2} END{print r, s}'
}
for c in 1 2 3 4 5 6; do
  read -r first _ <<<"$(ask "$c")"
  read -r again reason <<<"$(ask "$c")"
  echo "conversation $c: $first, again $again ($reason)"
  [ -n "$first" ] || fail "no x-kvmesh-replica header"
  [ "$first" = "$again" ] && [ "$reason" = warm ] || fail "a repeated prompt was not routed warm to the same replica"
done
kubectl -n "$NS" get kvp sim -o jsonpath='{.status.conditions}' ; echo
echo "PASS"
