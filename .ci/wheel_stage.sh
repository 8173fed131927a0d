#!/usr/bin/env bash
# CI's wheel stage: the package as users install it. Builds the sdist and, from it, the wheel; checks both hold
# every tinygpt/**.py of the checkout; installs the wheel (not editable) with the app and export extras into a
# fresh .venv-ci-wheel; then, from a temporary folder outside the checkout and with that venv's binaries only,
# runs tinygpt --version, train, generate, serve (one chat request), export, and the app's Train tab runner.
#
#     bash .ci/wheel_stage.sh [BUILD_PYTHON]    (default .venv-ci/bin/python; `build` is installed into it)
#
# .ci/run calls it after the test stages; it also runs alone. Every step has a time limit; `+ wheel:` lines say
# what ran. The checks themselves are in .ci/wheel_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
build_python=${1:-.venv-ci/bin/python}
venv=$checkout/.venv-ci-wheel
check=$checkout/.ci/wheel_check.py

say() { echo "+ wheel: $*"; }
stage_start=$SECONDS
step_start=""
step() {  # step DESCRIPTION: how long the previous step took, then what runs next
    [ -z "$step_start" ] || say "(took $((SECONDS - step_start)) s)"
    step_start=$SECONDS
    say "$*"
}

work=$(mktemp -d "${TMPDIR:-/tmp}/tinygpt-wheel.XXXXXX")
work=$(cd "$work" && pwd -P)
case "$work/" in
    "$(pwd -P)/"*) echo "the temporary folder $work is inside the checkout: set TMPDIR elsewhere" >&2; exit 1 ;;
esac
serve_pid=""
stop_serve() {  # SIGTERM (uvicorn's clean shutdown), SIGKILL after 20 s; always reaped
    [ -n "$serve_pid" ] || return 0
    kill "$serve_pid" 2>/dev/null || true
    for _ in $(seq 40); do
        kill -0 "$serve_pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -9 "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
    serve_pid=""
}
cleanup() {
    stop_serve
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

step "build tools ($build_python -m pip install build)"
timeout 300 "$build_python" -m pip install -q build

step "sdist, then the wheel from the sdist (python -m build --outdir $work/dist)"
if ! timeout 600 "$build_python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    echo "python -m build failed (the lines above are the end of its log)" >&2
    exit 1
fi
shopt -s nullglob
wheels=("$work"/dist/tinygpt-*-py3-none-any.whl)
sdists=("$work"/dist/tinygpt-*.tar.gz)
shopt -u nullglob
if [ "${#wheels[@]}" -ne 1 ] || [ "${#sdists[@]}" -ne 1 ]; then
    echo "expected one pure-Python wheel and one sdist in $work/dist, found: $(ls "$work/dist")" >&2
    exit 1
fi
wheel=${wheels[0]}
sdist=${sdists[0]}
version=$(basename "$wheel" | cut -d- -f2)
say "built $(basename "$sdist") and $(basename "$wheel")"

step "contents: every tinygpt/**.py of the checkout in the wheel and in the sdist"
timeout 60 "$build_python" "$check" contents "$wheel" "$sdist"

step "fresh virtualenv $venv: torch==2.13.0, then the wheel with [app,export] (not editable)"
rm -rf "$venv"
python3 -m venv "$venv"
timeout 300 "$venv/bin/python" -m pip install -q --upgrade pip
timeout 600 "$venv/bin/python" -m pip install -q torch==2.13.0  # unpinned, pip pulls GBs of CUDA wheels
timeout 900 "$venv/bin/python" -m pip install -q "$wheel[app,export]"

# From here on: a folder outside the checkout, the venv's binaries, nothing of the checkout on the path, a Hub
# cache of its own (nothing cached by earlier stages), and no Hub (CI has none; offline fails fast).
mkdir "$work/try"
cd "$work/try"
unset PYTHONPATH
export PATH="$venv/bin:$PATH" HF_HOME="$work/hf-home" HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export MPLCONFIGDIR="$work/matplotlib"

step "(in $PWD) import tinygpt from the venv's site-packages"
timeout 120 "$venv/bin/python" "$check" installed "$version"

step "tinygpt --version"
reported=$(timeout 120 "$venv/bin/tinygpt" --version)
echo "$reported"
if [ "$reported" != "tinygpt $version" ]; then
    echo "tinygpt --version said '$reported', the wheel is $version" >&2
    exit 1
fi

step "tinygpt train --max_steps 20 --output_dir run"
timeout 900 "$venv/bin/tinygpt" train --max_steps 20 --output_dir run
for file in model.safetensors config.json; do
    [ -f "run/$file" ] || { echo "tinygpt train left no run/$file" >&2; exit 1; }
done

step "tinygpt generate run --prompt Hi --max_new_tokens 20"
timeout 300 "$venv/bin/tinygpt" generate run --prompt Hi --max_new_tokens 20 --seed 0
echo

port=$("$venv/bin/python" "$check" port)
step "tinygpt serve run --port $port, one POST /v1/chat/completions, stop"
"$venv/bin/tinygpt" serve run --port "$port" >"$work/serve.log" 2>&1 &
serve_pid=$!
if ! timeout 400 "$venv/bin/python" "$check" serve "$port" "$serve_pid"; then
    stop_serve
    echo "--- tinygpt serve's output:" >&2
    tail -n 40 "$work/serve.log" >&2
    exit 1
fi
stop_serve

step "tinygpt export run out-hf --format hf"
timeout 300 "$venv/bin/tinygpt" export run out-hf --format hf
[ -f out-hf/config.json ] || { echo "tinygpt export left no out-hf/config.json" >&2; exit 1; }

step "tinygpt export run out.gguf --format gguf"
timeout 300 "$venv/bin/tinygpt" export run out.gguf --format gguf
[ -s out.gguf ] || { echo "tinygpt export left no out.gguf" >&2; exit 1; }

step "what tinygpt push reads from the installed package (the auto_map's modules, the Space's app.py template)"
timeout 120 "$venv/bin/python" "$check" hub-files run

step "the Train tab's runner (tinygpt.app.train_runs.TrainingRuns), 20 steps"
timeout 700 "$venv/bin/python" "$check" train-tab "$work/try/models"

say "(took $((SECONDS - step_start)) s)"
say "passed in $((SECONDS - stage_start)) s"
