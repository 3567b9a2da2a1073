#!/usr/bin/env bash
# Install helm into .cache/bin/helm by compiling it from the Go module proxy.
#
# Usage: scripts/install-helm.sh
#
# Environment:
#   HELM_VERSION  helm release to build (default: v3.16.4)
#   GO            go binary (default: go on PATH, else /usr/local/go/bin/go)
#   HELM_K8S_MINOR  Kubernetes 1.x minor version that helm template and lint
#                 assume without --kube-version (default: 31, from k8s.io/client-go
#                 v0.31 in the go.mod of helm v3.16.4)
#
# A first build downloads the module graph and compiles helm. It takes
# several minutes on a 2-core machine, so the script does nothing when the
# binary is already there. The helm version is checked only by
# "helm version", so delete .cache/bin/helm to rebuild another version.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.16.4}"
HELM_K8S_MINOR="${HELM_K8S_MINOR:-31}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${repo_root}/.cache/bin"
helm_bin="${bin_dir}/helm"

if [[ -x "${helm_bin}" ]]; then
    echo "helm is already installed: ${helm_bin} ($("${helm_bin}" version --short))"
    exit 0
fi

if [[ -n "${GO:-}" ]]; then
    go_bin="${GO}"
elif command -v go >/dev/null 2>&1; then
    go_bin="$(command -v go)"
elif [[ -x /usr/local/go/bin/go ]]; then
    go_bin=/usr/local/go/bin/go
else
    echo "error: go not found. Install Go 1.22 or later, or set GO to the go binary." >&2
    exit 1
fi

mkdir -p "${bin_dir}"
echo "Building helm ${HELM_VERSION} with $("${go_bin}" version) into ${bin_dir}"
start="$(date +%s)"
# helm's Makefile stamps these variables with -ldflags in release builds.
# Without them "helm version" reports only the minor version, and helm template
# assumes Kubernetes v1.20.
ldflags="-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
for package in pkg/chartutil pkg/lint/rules; do
    ldflags+=" -X helm.sh/helm/v3/${package}.k8sVersionMajor=1"
    ldflags+=" -X helm.sh/helm/v3/${package}.k8sVersionMinor=${HELM_K8S_MINOR}"
done
GOBIN="${bin_dir}" CGO_ENABLED=0 "${go_bin}" install -trimpath -ldflags "${ldflags}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
end="$(date +%s)"
echo "Installed ${helm_bin} ($("${helm_bin}" version --short)) in $((end - start)) s"
