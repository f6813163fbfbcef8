#!/bin/sh
# Separate environments for the peers of `make bench-peers`, outside the repository:
#   $PEERS/llama-cpp      llama-cpp-python 0.3.36 (builds llama.cpp from source, ~6 minutes)
#   $PEERS/litert-torch   litert-torch 0.10.0 on torch 2.13.0 (CPU) plus tensorflow-cpu
#   $PEERS/executorch     executorch 1.5.1 on torch 2.13.0 (CPU)
# Each is built once (a .ready stamp marks success). A peer that cannot be installed gets a
# .skipped file with the reason, and the comparison skips it with that message.
set -u
PYTHON=${PYTHON:-python3}
PEERS=${GENAPI_PEERS:-$HOME/.cache/genapi-bench/peers}
mkdir -p "$PEERS"

# setup NAME PIP-ARGUMENTS...: one venv, torch first when asked (pip would otherwise resolve a
# multi-GB CUDA build), then the peer's packages.
setup() {
    name=$1
    shift
    dir=$PEERS/$name
    if [ -f "$dir/.ready" ]; then
        echo "peer $name: ready in $dir"
        return 0
    fi
    echo "peer $name: installing into $dir (log: $dir.log)"
    rm -rf "$dir" "$dir.skipped"
    if ! (
        "$PYTHON" -m venv "$dir" &&
            "$dir/bin/python" -m pip install -q --upgrade pip &&
            for spec in "$@"; do
                # shellcheck disable=SC2086  # each step is a word list of pip arguments
                "$dir/bin/python" -m pip install $spec || exit 1
            done
    ) >"$dir.log" 2>&1; then
        tail -n 5 "$dir.log" >"$dir.skipped"
        echo "peer $name: SKIPPED, installation failed (see $dir.log)"
        return 0
    fi
    touch "$dir/.ready"
    echo "peer $name: ready"
}

# llama.cpp through its Python binding, built for this CPU.
setup llama-cpp "llama-cpp-python==0.3.36 numpy"
# litert-torch needs TensorFlow at conversion time although it does not declare it.
setup litert-torch "torch==2.13.0" "litert-torch==0.10.0 tensorflow-cpu transformers safetensors"
# ExecuTorch: its exporter and pybindings runtime.
setup executorch "torch==2.13.0" "executorch==1.5.1 transformers safetensors"
