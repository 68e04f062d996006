# Shared by scripts/test and scripts/demo: find Python >= 3.12 and prepare a venv.
# Usage: source scripts/_env.sh; ensure_venv VENV_DIR "PIP_SPEC..."
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# find_python_at_least MINOR OVERRIDE [CANDIDATE...]: print the first Python 3.MINOR+
# among $OVERRIDE (an environment variable's name), the candidates on PATH and pyenv's
# versions (newest first); return 1 when there is none.
find_python_at_least() {
    local minor="$1" override="$2"; shift 2
    local candidates=()
    [ -n "${!override:-}" ] && candidates+=("${!override}")
    candidates+=("$@" python3 python)
    if command -v pyenv >/dev/null 2>&1; then
        local root; root="$(pyenv root)"
        for v in $(ls -1 "$root/versions" 2>/dev/null | sort -rV); do
            candidates+=("$root/versions/$v/bin/python3")
        done
    fi
    for c in "${candidates[@]}"; do
        if command -v "$c" >/dev/null 2>&1 &&
           "$c" -c "import sys; sys.exit(0 if sys.version_info >= (3, $minor) else 1)" 2>/dev/null; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

# find_python: a Python >= 3.12 for the project's venvs (PYNENC_MONGO_PYTHON first).
find_python() {
    find_python_at_least 12 PYNENC_MONGO_PYTHON python3.13 python3.12 && return 0
    echo "error: no Python >= 3.12 found (on PATH or in pyenv); set PYNENC_MONGO_PYTHON" >&2
    return 1
}

# ensure_venv DIR SPEC...: create DIR (or reuse it) and install SPEC when the
# project's pyproject.toml or the spec changed since the last install.
ensure_venv() {
    local dir="$1"; shift
    local stamp="$dir/.pynenc-mongo-stamp"
    local want
    want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $*"
    if [ ! -x "$dir/bin/python" ]; then
        local py; py="$(find_python)"
        echo "==> creating $dir with $("$py" --version)"
        "$py" -m venv "$dir"
        "$dir/bin/python" -m pip install -q --upgrade pip
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing into $dir: $*"
        "$dir/bin/python" -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true
        "$dir/bin/python" -c "import pynenc_mongo" 
        echo "$want" > "$stamp"
    fi
}

#: mongoeco release the wire test server was measured with (shared/reference/wire-test-server.md).
MONGOECO_SPEC="mongoeco[wire]==4.11.0"

# find_python313: print a Python >= 3.13 (mongoeco's requirement), or return 1.
find_python313() {
    find_python_at_least 13 PYNENC_MONGO_WIRE_PYTHON python3.14 python3.13
}

# ensure_wire_venv DIR: the wire test server's own venv (mongoeco); one line and
# status 1 when no Python >= 3.13 exists here.
ensure_wire_venv() {
    local dir="$1"
    local stamp="$dir/.pynenc-mongo-stamp"
    if [ ! -x "$dir/bin/python" ]; then
        local py
        if ! py="$(find_python313)"; then
            echo "wire test server unavailable: no Python >= 3.13 found (mongoeco needs it; set PYNENC_MONGO_WIRE_PYTHON)"
            return 1
        fi
        echo "==> creating $dir with $("$py" --version)"
        "$py" -m venv "$dir"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$MONGOECO_SPEC" ]; then
        echo "==> installing into $dir: $MONGOECO_SPEC"
        "$dir/bin/python" -m pip install -q "$MONGOECO_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
        "$dir/bin/python" -c "import mongoeco.wire" || return 1
        echo "$MONGOECO_SPEC" > "$stamp"
    fi
}
