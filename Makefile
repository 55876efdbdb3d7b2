# Ferry's entry points. `make demo` runs the main job, `make test` runs every
# test against the real local test bed (both bring up what they need).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Build outputs live with the test bed's caches, outside the clone, so a fresh
# clone on the same machine (which is what CI is) reuses the dependencies'
# build outputs.
export FERRY_CACHE ?= $(HOME)/.cache/ferry
export CARGO_TARGET_DIR ?= $(FERRY_CACHE)/target
# A fresh clone rebuilds the workspace's own crates once: incremental state
# would only fill the disk (23 GiB of it after a few weeks of runs).
export CARGO_INCREMENTAL ?= 0
KUBECTL = $(FERRY_CACHE)/bin/kubectl --kubeconfig $(FERRY_CACHE)/run/kubeconfig

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install the machine packages the test bed needs (idempotent)
	@bash e2e/testbed/deps.sh

.PHONY: space
space: ## make sure the disk has room for a run (prunes build outputs when it has not)
	@bash e2e/testbed/disk.sh

.PHONY: testbed
testbed: deps space ## bring up both Cassandra clusters and the Kubernetes control plane
	@bash e2e/testbed/up.sh --source-nodes 3 --fresh-if-full

.PHONY: down
down: ## stop the test bed (state kept; `bash e2e/testbed/down.sh --purge` deletes it)
	@bash e2e/testbed/down.sh

.PHONY: crds
crds: ## regenerate crds/ and the chart's copy from operator/src/crd.rs
	cargo run -q -p ferry-operator -- crd --write .

.PHONY: manifests
manifests: ## regenerate manifests/install.yaml and the chart README's values table
	bash hack/render-install.sh
	python3 charts/ferry/hack/values-table.py

.PHONY: chart-docs
chart-docs: ## regenerate the chart README's values table
	python3 charts/ferry/hack/values-table.py

.PHONY: lint
lint: ## rustfmt and clippy, warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

.PHONY: test
test: testbed lint ## every test, against the real test bed
	cargo test --workspace --locked --no-fail-fast

.PHONY: demo
demo: deps space ## the main job: a whole live migration on the local real node, with a summary
	bash e2e/demo.sh

.PHONY: demo-clean
demo-clean: ## remove the demo's migration, clusters and Ferry release
	bash e2e/demo.sh --clean

.PHONY: kind-e2e
kind-e2e: deps space ## the end-to-end migration on kind (1 control plane, 3 workers), built from packages alone; deletes the cluster at the end (KIND_ARGS=--keep-cluster keeps it)
	bash e2e/kind.sh $(KIND_ARGS)

.PHONY: e2e
e2e: deps space ## the end-to-end migration tests, the long fault cases included
	bash e2e/testbed/up.sh --no-cassandra --node
	cargo test -p ferry-e2e --locked --test migration -- --include-ignored --test-threads=1
